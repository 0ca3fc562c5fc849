"""The schedule side of `python -m jobs_core`: `scheduler`, and the schedules `list` shows."""

from __future__ import annotations

import json
import logging
import signal
import threading
from datetime import datetime, timezone
from typing import Any

from ..backend import dispatcher_factory
from ..config import JobsSettings, import_string
from ..errors import JobsError
from ..jobs.registry import JobRegistry
from ..worker import ContextSource
from .scheduler import Clock, Scheduler

logger = logging.getLogger("jobs_core.scheduler")

LISTED_TICKS = 3


def describe_schedules(
    registry: JobRegistry[Any], now: datetime | None = None
) -> list[dict[str, Any]]:
    """Each schedule with its next ticks, in its timezone and in UTC."""
    now = now or datetime.now(timezone.utc)
    return [
        {
            "name": schedule.name,
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "job": schedule.job.name,
            "payload": schedule.payload.model_dump(mode="json"),
            "next_ticks": [
                {
                    "local": tick.astimezone(schedule.tz).isoformat(),
                    "utc": tick.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                for tick in schedule.next_ticks(LISTED_TICKS, now)
            ],
        }
        for schedule in registry.schedules
    ]


def print_schedules(described_jobs: list[dict[str, Any]]) -> None:
    """The text form of `list`'s schedules, after the jobs."""
    schedules = [s for job in described_jobs for s in job["schedules"]]
    if not schedules:
        return
    print("schedules:")
    for s in schedules:
        print(
            f"{s['name']}  cron: {s['cron']} ({s['timezone']})  job: {s['job']}  "
            f"payload: {json.dumps(s['payload'], sort_keys=True)}"
        )
        for tick in s["next_ticks"]:
            print(f"  next: {tick['local']} {s['timezone']} = {tick['utc']}")


def load_clock(target: str) -> Clock:
    """`--clock MODULE:NAME`: a `Clock`, or a factory that returns one."""
    clock = import_string(target, "--clock")
    if not _is_clock(clock) and callable(clock):
        try:
            clock = clock()
        except Exception as exc:
            raise JobsError(f"--clock {target}: calling it failed: {exc}") from None
    if not _is_clock(clock):
        raise JobsError(f"--clock {target} is not a Clock (needs now() and sleep_until())")
    return clock  # type: ignore[no-any-return]


def _is_clock(candidate: Any) -> bool:
    return callable(getattr(candidate, "now", None)) and callable(
        getattr(candidate, "sleep_until", None)
    )


def run_scheduler(
    registry: JobRegistry[Any],
    settings: JobsSettings,
    *,
    context: ContextSource = None,
    clock: Clock | None = None,
) -> int:
    """Dispatch `registry`'s schedules through the configured backend until SIGTERM / SIGINT."""
    if not registry.schedules:
        raise JobsError("the registry has no schedules: define them with jobs.schedule(...)")
    if settings.backend == "inngest":
        raise JobsError(
            "JOBS_BACKEND is 'inngest': Inngest is the clock, and the schedules are cron "
            "functions served with the jobs (python -m jobs_core worker); no scheduler is needed"
        )
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    if settings.backend in ("celery", "dramatiq") and not settings.broker_url.startswith(
        ("redis://", "rediss://")
    ):
        logger.warning(
            "the %s dispatcher on a non-Redis broker keeps idempotency keys in this process: "
            "run a single scheduler, or two replicas may both dispatch a tick",
            settings.backend,
        )
    factory = dispatcher_factory(settings.backend)
    dispatcher = factory(settings, context=context, instrumentation=None)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        Scheduler(registry, dispatcher, clock=clock).run_forever(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close = getattr(dispatcher, "close", None)
        if close is not None:
            close()
    logger.info("scheduler stopped")
    return 0


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
