"""A job's flow control as its Inngest function's own options, which the Inngest server enforces.

`Concurrency` is `concurrency` (scope `fn`, key `event.data.<key>`), `Throttle` is `throttle` with
`burst=1`, whose period Inngest takes in whole seconds from 1 s to 7 days: any other is refused
when the functions are built (C28). Payload idempotency is the core's event id (C27).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import inngest

from jobs_core.flow.options import flow_refusal
from jobs_core.jobs.job import Job

SECOND, WEEK = timedelta(seconds=1), timedelta(days=7)


def _key(field: str | None) -> str | None:
    return None if field is None else f"event.data.{field}"


def flow_options(job: Job[Any, Any]) -> dict[str, Any]:
    """`create_function` keyword arguments for `job`'s concurrency and throttle options."""
    flow, options = job.flow, dict[str, Any]()
    if flow is not None and (c := flow.concurrency) is not None:
        options["concurrency"] = [inngest.Concurrency(limit=c.limit, key=_key(c.key), scope="fn")]
    if flow is not None and (t := flow.throttle) is not None:
        if not SECOND <= t.period <= WEEK or t.period % SECOND:
            why = f"Inngest's throttle period is whole seconds from 1 s to 7 days, not {t.period}"
            raise flow_refusal(job.name, f"throttle={t!r}", "inngest", why)
        key = _key(t.key)
        options["throttle"] = inngest.Throttle(limit=t.limit, period=t.period, key=key, burst=1)
    return options
