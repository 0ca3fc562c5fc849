"""The scheduler: dispatches every schedule's ticks through any `JobDispatcherPort` (C29–C30).

`Scheduler.run_pending(now)` is the whole decision: it dispatches each schedule's latest tick in
(the previous call's `now`, `now`], with the tick's idempotency key. The first call only
remembers `now`, so ticks missed while no scheduler ran are not caught up. The scheduler keeps no
shared state: run one on every replica, and the dispatcher's idempotency keys make each tick one
dispatch. `run_forever` sleeps until the next tick; `start` runs it in a background thread (the
inline backend's way to run schedules while developing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from ..dispatch.port import DispatchReceipt, JobDispatcherPort
from ..errors import DispatchError
from ..hooks import HOOKS, measure
from ..jobs.registry import JobRegistry
from .schedule import Schedule

UTC = timezone.utc

logger = logging.getLogger("jobs_core.scheduler")


class Clock(Protocol):
    """Where a scheduler reads the time and waits: the system clock, or a test's own."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    def sleep_until(self, moment: datetime, stop: threading.Event) -> None:
        """Return once `now() >= moment`, or as soon as `stop` is set."""
        ...


class SystemClock:
    """The wall clock. Sleeps are cut into pieces of at most `max_sleep` seconds, so that a
    step of the system clock (NTP, a suspended laptop) is noticed within that time."""

    def __init__(self, max_sleep: float = 60.0) -> None:
        self.max_sleep = max_sleep

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep_until(self, moment: datetime, stop: threading.Event) -> None:
        while not stop.is_set():
            remaining = (moment - self.now()).total_seconds()
            if remaining <= 0:
                return
            stop.wait(min(remaining, self.max_sleep))


@dataclass(frozen=True, slots=True)
class Tick:
    """One tick a scheduler handled: its receipt, or the error that stopped its dispatch."""

    schedule: Schedule[Any]
    at: datetime
    """The tick's instant, in UTC."""
    receipt: DispatchReceipt | None = None
    error: BaseException | None = None

    @property
    def key(self) -> str:
        """The idempotency key the tick was dispatched with."""
        return self.schedule.idempotency_key(self.at)


class Scheduler:
    """Dispatches the ticks of `schedules` (a `JobRegistry`'s, or any list) via `dispatcher`.

    A tick whose dispatch raised `DispatchError` (the backend did not take it) is tried again
    every `retry_interval`, until it goes through, a newer tick of its schedule replaces it, or
    `retry_for` has passed since the tick. Any other error is logged and the tick is done.
    """

    def __init__(
        self,
        schedules: JobRegistry[Any] | Iterable[Schedule[Any]],
        dispatcher: JobDispatcherPort,
        *,
        clock: Clock | None = None,
        retry_interval: timedelta = timedelta(seconds=10),
        retry_for: timedelta = timedelta(hours=1),
    ) -> None:
        self._source = schedules if isinstance(schedules, JobRegistry) else list(schedules)
        self.dispatcher = dispatcher
        self.clock: Clock = clock or SystemClock()
        self.retry_interval = retry_interval
        self.retry_for = retry_for
        self._last: datetime | None = None
        self._failed: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def schedules(self) -> list[Schedule[Any]]:
        source = self._source
        return source.schedules if isinstance(source, JobRegistry) else list(source)

    def run_pending(self, now: datetime | None = None) -> list[Tick]:
        """Dispatch each schedule's latest tick in (the previous call's `now`, `now`].

        The first call only remembers `now` and dispatches nothing. Returns the ticks handled.
        """
        now = now or self.clock.now()
        if now.utcoffset() is None:
            raise ValueError(f"now must be a timezone-aware datetime, got {now!r}")
        now = now.astimezone(UTC)
        with self._lock:
            previous = self._last
            self._last = now if previous is None else max(previous, now)
            if previous is None:
                return []
            handled = []
            for schedule in self.schedules:
                due = schedule.latest_tick(now, after=previous) if now > previous else None
                retry = self._failed.pop(schedule.name, None)
                if due is None and retry is not None:
                    if now - retry <= self.retry_for:
                        due = retry
                    else:
                        logger.error(
                            "schedule %s: gave up on tick %s after %s of failed dispatches",
                            schedule.name,
                            schedule.idempotency_key(retry),
                            self.retry_for,
                        )
                if due is not None:
                    handled.append(self._dispatch(schedule, due))
            return handled

    def _dispatch(self, schedule: Schedule[Any], tick: datetime) -> Tick:
        key = schedule.idempotency_key(tick)
        if HOOKS:  # how late the tick is dispatched (a gauge, with tracing on)
            lag = (self.clock.now() - tick).total_seconds()
            measure("jobs_core.scheduler.lag", lag, {"jobs_core.schedule": schedule.name})
        try:
            receipt = self.dispatcher.dispatch_sync(
                schedule.job, schedule.payload, idempotency_key=key
            )
        except DispatchError as error:
            self._failed[schedule.name] = tick
            logger.warning(
                "schedule %s: tick %s not dispatched, will retry: %s", schedule.name, key, error
            )
            return Tick(schedule, tick, error=error)
        except Exception as error:
            logger.exception("schedule %s: tick %s failed", schedule.name, key)
            return Tick(schedule, tick, error=error)
        if receipt.deduplicated:
            logger.debug("schedule %s: tick %s was already dispatched", schedule.name, key)
        else:
            logger.info(
                "schedule %s: tick %s dispatched %s (%s)",
                schedule.name,
                key,
                schedule.job.name,
                receipt.dispatch_id,
            )
        return Tick(schedule, tick, receipt=receipt)

    def next_run(self) -> datetime | None:
        """When `run_pending` next has something to do (None before the first call, or when no
        schedule ever fires again)."""
        with self._lock:
            last = self._last
            if last is None:
                return None
            moments = [s.next_tick(last) for s in self.schedules]
            if self._failed:
                moments.append(last + self.retry_interval)
        return min((m for m in moments if m is not None), default=None)

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Dispatch ticks as they come, sleeping in between, until `stop` is set."""
        stop = stop or self._stop
        self.run_pending()
        logger.info(
            "scheduler running from %s: %d schedule(s), next tick at %s",
            self._last.isoformat() if self._last else "?",
            len(self.schedules),
            _iso(self.next_run()),
        )
        while not stop.is_set():
            wake = self.next_run()
            if wake is None:
                stop.wait()
                break
            self.clock.sleep_until(wake, stop)
            if not stop.is_set():
                self.run_pending()

    def start(self) -> Scheduler:
        """Run `run_forever` in a daemon thread (for development, with the inline backend)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this scheduler is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run_forever, args=(self._stop,), name="jobs-core-scheduler", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the thread `start` began, and wait for it (a tick being dispatched finishes)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Scheduler({[s.name for s in self.schedules]!r}, dispatcher={self.dispatcher!r})"


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "never"
