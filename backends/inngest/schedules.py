"""Schedules on Inngest: each schedule is a cron function served with the jobs (C29–C30).

Inngest is the clock: it fires the function at each tick of `TZ=<timezone> <cron>`, and the
function dispatches the schedule's job like any other dispatch, with the tick's idempotency key,
which becomes the event id (`<job>:<schedule>@<tick>`); Inngest runs one job per event id in
24 h. The tick is read from the timer event: its id is the tick's instant (RFC 3339) on current
Inngest servers, else its `ts`; it is then mapped onto the schedule's own tick at or before that
instant, so a retried run, a second firing of a repeated local hour, or a manual invoke names a
tick already dispatched and Inngest drops the repeat.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import inngest

from jobs_core.dispatch.port import JobDispatcherPort
from jobs_core.errors import JobConfigError
from jobs_core.instrumentation import Instrumentation
from jobs_core.jobs.registry import JobRegistry
from jobs_core.schedules.schedule import Schedule

from .dispatcher import InngestDispatcher

UTC = timezone.utc

FUNCTION_ID_PREFIX = "schedule:"
SCHEDULE_RETRIES = 4
"""Retries of a cron function whose dispatch failed; every retry names the same tick."""

TIMER_GRACE = timedelta(seconds=1)
"""A timer that fires (or is stamped) this much before its tick still names that tick."""


def schedule_function_id(schedule: Schedule[Any]) -> str:
    """The Inngest function id of a schedule (job names are function ids too, so a prefix)."""
    return f"{FUNCTION_ID_PREFIX}{schedule.name}"


def cron_trigger(schedule: Schedule[Any]) -> str:
    """The schedule's cron string for Inngest, with its timezone (`TZ=Europe/Paris 0 9 * * *`)."""
    return f"TZ={schedule.timezone} {schedule.cron}"


def timer_tick(schedule: Schedule[Any], event: inngest.Event) -> datetime:
    """The schedule's tick that a timer event stands for (the last one at or before it)."""
    moment = _instant(event.id)
    if moment is None:
        moment = datetime.fromtimestamp(event.ts / 1000, UTC) if event.ts else datetime.now(UTC)
    tick = schedule.latest_tick(moment + TIMER_GRACE)
    if tick is None:
        raise inngest.NonRetriableError(
            f"schedule {schedule.name!r}: no tick of {schedule.cron!r} at or before {moment}"
        )
    return tick


def _instant(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.utcoffset() is not None else None


def create_inngest_schedule_function(
    client: inngest.Inngest,
    schedule: Schedule[Any],
    dispatcher: Callable[[], JobDispatcherPort],
) -> inngest.Function[Any]:
    """The cron function of one schedule; `dispatcher()` gives the dispatcher it sends with."""

    @client.create_function(
        fn_id=schedule_function_id(schedule),
        name=f"{schedule.name} (schedule of {schedule.job.name})",
        retries=SCHEDULE_RETRIES,
        trigger=inngest.TriggerCron(cron=cron_trigger(schedule)),
    )
    def fire(ctx: inngest.ContextSync) -> dict[str, Any]:
        key = schedule.idempotency_key(timer_tick(schedule, ctx.event))
        receipt = dispatcher().dispatch_sync(schedule.job, schedule.payload, idempotency_key=key)
        return {"tick": key, "dispatch_id": receipt.dispatch_id}

    return fire


def create_inngest_schedule_functions(
    client: inngest.Inngest,
    registry: JobRegistry[Any],
    instrumentation: Instrumentation | None = None,
    dispatcher: JobDispatcherPort | None = None,
) -> list[inngest.Function[Any]]:
    """One cron function per schedule of `registry`.

    They dispatch through `dispatcher`, by default an `InngestDispatcher` on `client` made at
    the first tick (so serving an app without schedules needs no event key).
    """
    for schedule in registry.schedules:
        if registry.get(schedule_function_id(schedule)) is not None:
            raise JobConfigError(
                f"schedule {schedule.name!r}: its Inngest function id "
                f"{schedule_function_id(schedule)!r} is also a job's name; rename one of them"
            )
    lock = threading.Lock()
    made: list[JobDispatcherPort] = [dispatcher] if dispatcher is not None else []

    def get_dispatcher() -> JobDispatcherPort:
        with lock:
            if not made:
                made.append(InngestDispatcher(client, instrumentation=instrumentation))
            return made[0]

    return [
        create_inngest_schedule_function(client, schedule, get_dispatcher)
        for schedule in registry.schedules
    ]
