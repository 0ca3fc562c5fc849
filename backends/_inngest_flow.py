"""A job's flow control as its Inngest function's own options, enforced by the Inngest server.

`Concurrency(limit, key)` is the function's `concurrency` (scope `fn`, key `event.data.<key>`),
and `Throttle(limit, period, key)` its `throttle` with `burst=1` (Inngest's GCRA spaces starts
`period / limit` apart). Inngest takes a throttle period in whole seconds from 1 s to 7 days:
any other is refused here, when the functions are built (C28). Payload idempotency needs
nothing here: the core puts the derived key in the event id, which Inngest deduplicates (C27).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import inngest

from jobs_core.flow import flow_refusal
from jobs_core.job import Job

THROTTLE_PERIODS = (timedelta(seconds=1), timedelta(days=7))


def _key(field: str | None) -> str | None:
    return None if field is None else f"event.data.{field}"


def flow_options(job: Job[Any, Any]) -> dict[str, Any]:
    """`create_function` keyword arguments for `job`'s concurrency and throttle options."""
    flow = job.flow
    options: dict[str, Any] = {}
    if flow is None:
        return options
    if flow.concurrency is not None:
        limit, key = flow.concurrency.limit, _key(flow.concurrency.key)
        options["concurrency"] = [inngest.Concurrency(limit=limit, key=key, scope="fn")]
    if flow.throttle is not None:
        throttle, (shortest, longest) = flow.throttle, THROTTLE_PERIODS
        period = throttle.period
        if not shortest <= period <= longest or period % timedelta(seconds=1):
            why = f"Inngest's throttle period is whole seconds from 1 s to 7 days, not {period}"
            raise flow_refusal(job.name, f"throttle={throttle!r}", "inngest", why)
        options["throttle"] = inngest.Throttle(
            limit=throttle.limit, period=period, key=_key(throttle.key), burst=1
        )
    return options
