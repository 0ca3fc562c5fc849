"""`Scheduler.run_pending(now)` with a controlled clock: latest tick only, no catch-up, one
dispatch per tick however many schedulers share a dispatcher (C30), retries of failed dispatches,
and a run loop that sleeps until the next tick."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel

from jobs_core import DispatchError, DispatchReceipt, JobRegistry, Scheduler
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.dispatch.port import DispatchItem
from jobs_core.testing import RecordingDispatcher
from tests.conformance.harness import wait_until
from tests.schedules.clock import AcceleratedClock

UTC = timezone.utc
T0 = datetime(2025, 6, 2, 8, 59, 30, tzinfo=UTC)


class Note(BaseModel):
    text: str


def registry() -> JobRegistry[Any]:
    jobs = JobRegistry[Any]()
    note = jobs.define_job("note", payload=Note, handle=lambda p, c: None)
    jobs.schedule("minutely", cron="* * * * *", job=note, payload={"text": "m"})
    jobs.schedule("hourly", cron="0 * * * *", job=note, payload={"text": "h"})
    return jobs


def keys(ticks: Iterable[Any]) -> list[str]:
    return [t.key for t in ticks]


def test_the_first_call_only_remembers_now() -> None:
    dispatcher = RecordingDispatcher()
    scheduler = Scheduler(registry(), dispatcher)
    assert scheduler.next_run() is None
    assert scheduler.run_pending(datetime(2025, 6, 2, 9, 0, 0, tzinfo=UTC)) == []
    assert dispatcher.dispatched == []
    assert scheduler.next_run() == datetime(2025, 6, 2, 9, 1, tzinfo=UTC)


def test_each_call_dispatches_the_ticks_in_the_window_with_their_keys() -> None:
    dispatcher = RecordingDispatcher()
    scheduler = Scheduler(registry(), dispatcher)
    scheduler.run_pending(T0)
    ticks = scheduler.run_pending(T0 + timedelta(seconds=31))  # 09:00:01
    assert keys(ticks) == ["minutely@2025-06-02T09:00:00Z", "hourly@2025-06-02T09:00:00Z"]
    assert [d.prepared.idempotency_key for d in dispatcher.dispatched] == keys(ticks)
    assert [d.payload for d in dispatcher.dispatched] == [Note(text="m"), Note(text="h")]
    assert scheduler.run_pending(T0 + timedelta(seconds=59)) == []  # 09:00:29: nothing new


def test_a_tick_at_exactly_now_is_due_and_not_dispatched_again() -> None:
    dispatcher = RecordingDispatcher()
    scheduler = Scheduler(registry(), dispatcher)
    scheduler.run_pending(T0)
    nine = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
    assert len(scheduler.run_pending(nine)) == 2
    assert scheduler.run_pending(nine) == []
    assert scheduler.run_pending(nine + timedelta(microseconds=1)) == []


def test_only_the_latest_missed_tick_is_dispatched_no_catch_up() -> None:
    dispatcher = RecordingDispatcher()
    scheduler = Scheduler(registry(), dispatcher)
    scheduler.run_pending(T0)
    # The process was suspended from 08:59:30 to 11:42:10: 163 minutely ticks and 3 hourly passed.
    ticks = scheduler.run_pending(datetime(2025, 6, 2, 11, 42, 10, tzinfo=UTC))
    assert keys(ticks) == ["minutely@2025-06-02T11:42:00Z", "hourly@2025-06-02T11:00:00Z"]
    assert len(dispatcher.dispatched) == 2


def test_a_clock_that_goes_back_dispatches_nothing_twice() -> None:
    dispatcher = RecordingDispatcher()
    scheduler = Scheduler(registry(), dispatcher)
    scheduler.run_pending(T0)
    scheduler.run_pending(T0 + timedelta(minutes=2))
    assert scheduler.run_pending(T0) == []
    assert scheduler.run_pending(T0 + timedelta(minutes=2)) == []
    assert len(dispatcher.dispatched) == 2  # 09:01 (minutely) and 09:00 (hourly)


def test_three_schedulers_on_one_dispatcher_dispatch_each_tick_once() -> None:
    """C30 in miniature: the replicas' clocks differ by seconds and they wake at different
    times; the tick's key makes every dispatch after the first a duplicate."""
    jobs = registry()
    dispatcher = RecordingDispatcher()
    replicas = [Scheduler(jobs, dispatcher) for _ in range(3)]
    for i, replica in enumerate(replicas):
        replica.run_pending(T0 + timedelta(seconds=i))
    handled: list[Any] = []
    for step in range(1, 40):
        for i, replica in enumerate(replicas):
            handled += replica.run_pending(T0 + timedelta(seconds=7 * step + 3 * i))
    sent = [d.prepared.idempotency_key for d in dispatcher.dispatched]
    assert len(sent) == len(set(sent)) == 6  # until 09:04:09: 09:00 (both), 09:01 .. 09:04
    assert sorted(sent)[:2] == ["hourly@2025-06-02T09:00:00Z", "minutely@2025-06-02T09:00:00Z"]
    assert sum(1 for t in handled if t.receipt.deduplicated) == 2 * len(sent)


class FlakyDispatcher(RecordingDispatcher):
    """Refuses the first `failures` dispatches as a broker that is down would (C7)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def dispatch_sync(self, job: Any, payload: Any, **options: Any) -> DispatchReceipt:
        if self.failures:
            self.failures -= 1
            raise DispatchError(job.name, "connection refused")
        return super().dispatch_sync(job, payload, **options)


def one_schedule(cron: str = "0 9 * * *") -> JobRegistry[Any]:
    jobs = JobRegistry[Any]()
    note = jobs.define_job("note", payload=Note, handle=lambda p, c: None)
    jobs.schedule("daily", cron=cron, job=note, payload={"text": "d"})
    return jobs


def test_a_tick_the_backend_refused_is_retried_until_it_goes_through() -> None:
    dispatcher = FlakyDispatcher(failures=2)
    scheduler = Scheduler(one_schedule(), dispatcher, retry_interval=timedelta(seconds=10))
    scheduler.run_pending(T0)
    nine = datetime(2025, 6, 2, 9, 0, 1, tzinfo=UTC)
    [failed] = scheduler.run_pending(nine)
    assert isinstance(failed.error, DispatchError) and failed.receipt is None
    assert scheduler.next_run() == nine + timedelta(seconds=10)  # not tomorrow 09:00
    [failed_again] = scheduler.run_pending(nine + timedelta(seconds=10))
    assert failed_again.key == failed.key
    [sent] = scheduler.run_pending(nine + timedelta(seconds=20))
    assert sent.key == "daily@2025-06-02T09:00:00Z" and sent.receipt is not None
    assert scheduler.run_pending(nine + timedelta(seconds=30)) == []
    assert len(dispatcher.dispatched) == 1
    assert scheduler.next_run() == datetime(2025, 6, 3, 9, 0, tzinfo=UTC)


def test_a_refused_tick_is_dropped_when_a_newer_one_comes_or_after_retry_for() -> None:
    dispatcher = FlakyDispatcher(failures=10**6)
    scheduler = Scheduler(one_schedule("*/5 * * * *"), dispatcher, retry_for=timedelta(minutes=2))
    scheduler.run_pending(T0)
    assert keys(scheduler.run_pending(T0 + timedelta(minutes=1))) == ["daily@2025-06-02T09:00:00Z"]
    assert keys(scheduler.run_pending(T0 + timedelta(minutes=2))) == ["daily@2025-06-02T09:00:00Z"]
    assert scheduler.run_pending(T0 + timedelta(minutes=3)) == []  # 2 min after the tick: given up
    assert keys(scheduler.run_pending(T0 + timedelta(minutes=6))) == ["daily@2025-06-02T09:05:00Z"]
    dispatcher.failures = 0
    assert keys(scheduler.run_pending(T0 + timedelta(minutes=11))) == ["daily@2025-06-02T09:10:00Z"]


def test_a_job_that_fails_inline_is_not_dispatched_again() -> None:
    runs: list[str] = []
    jobs = JobRegistry[Any]()

    def boom(payload: Note, ctx: Any) -> None:
        runs.append(payload.text)
        raise RuntimeError("boom")

    job = jobs.define_job("boom", payload=Note, handle=boom)
    jobs.schedule("boom.daily", cron="0 9 * * *", job=job, payload={"text": "x"})
    scheduler = Scheduler(jobs, InlineDispatcher())
    scheduler.run_pending(T0)
    [tick] = scheduler.run_pending(T0 + timedelta(minutes=1))
    assert tick.error is not None and len(runs) == 5  # the job's own retries ran, inline
    assert scheduler.run_pending(T0 + timedelta(minutes=2)) == [] and len(runs) == 5


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Scheduler(registry(), RecordingDispatcher()).run_pending(datetime(2025, 6, 2, 9, 0))


def test_schedules_defined_after_the_scheduler_was_made_are_seen() -> None:
    jobs = one_schedule()
    scheduler = Scheduler(jobs, RecordingDispatcher())
    jobs.schedule("late", cron="*/5 * * * *", job=jobs["note"], payload={"text": "l"})
    assert [s.name for s in scheduler.schedules] == ["daily", "late"]


class RecordingClock:
    """A clock that jumps straight to the moment a scheduler sleeps until, and records it."""

    def __init__(self, now: datetime, sleeps: int) -> None:
        self.current = now
        self.sleeps: list[datetime] = []
        self.budget = sleeps

    def now(self) -> datetime:
        return self.current

    def sleep_until(self, moment: datetime, stop: threading.Event) -> None:
        self.sleeps.append(moment)
        self.current = max(self.current, moment) + timedelta(milliseconds=3)
        self.budget -= 1
        if self.budget == 0:
            stop.set()


def test_run_forever_sleeps_until_the_next_tick_of_any_schedule() -> None:
    dispatcher = RecordingDispatcher()
    clock = RecordingClock(datetime(2025, 6, 2, 8, 58, 20, tzinfo=UTC), sleeps=4)
    jobs = JobRegistry[Any]()
    note = jobs.define_job("note", payload=Note, handle=lambda p, c: None)
    jobs.schedule("a", cron="*/2 * * * *", job=note, payload={"text": "a"})
    jobs.schedule("b", cron="59 8 * * *", job=note, payload={"text": "b"})
    Scheduler(jobs, dispatcher, clock=clock).run_forever(threading.Event())
    at = [datetime(2025, 6, 2, h, m, tzinfo=UTC) for h, m in [(8, 59), (9, 0), (9, 2), (9, 4)]]
    assert clock.sleeps == at  # one wake-up per tick, no polling in between
    assert [d.prepared.idempotency_key for d in dispatcher.dispatched] == [
        "b@2025-06-02T08:59:00Z",
        "a@2025-06-02T09:00:00Z",
        "a@2025-06-02T09:02:00Z",
    ]


def test_start_runs_the_scheduler_in_a_thread_with_the_inline_backend() -> None:
    """The development setup: the inline dispatcher runs each tick's job in the scheduler's
    thread. The clock runs 600 times faster than real time (a minute every 0.1 s)."""
    ran: list[str] = []
    lock = threading.Lock()
    jobs = JobRegistry[Any]()

    def note(payload: Note, ctx: list[str]) -> None:
        with lock:
            ctx.append(payload.text)

    job = jobs.define_job("note", payload=Note, handle=note)
    jobs.schedule("minutely", cron="* * * * *", job=job, payload={"text": "tick"})
    clock = AcceleratedClock(T0, epoch=time.time(), speed=600)
    scheduler = Scheduler(jobs, InlineDispatcher(context=ran), clock=clock)
    with scheduler:
        wait_until(lambda: len(ran) >= 3, timeout=20, what="three ticks")
    count = len(ran)
    stopped_at = clock.now()
    wait_until(lambda: clock.now() > stopped_at + timedelta(minutes=2), timeout=5)
    assert len(ran) == count  # stopped: no tick after stop()
    assert ran == ["tick"] * count


def test_an_empty_scheduler_waits_for_stop() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler([], RecordingDispatcher()).run_forever, args=(stop,))
    thread.start()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_only_dispatch_sync_of_the_port_is_used() -> None:
    """The scheduler uses only `dispatch_sync` of the port: a minimal dispatcher works."""

    class OnlySync:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str | None]] = []

        def dispatch_sync(
            self, job: Any, payload: Any, *, idempotency_key: str | None = None, **_: Any
        ) -> DispatchReceipt:
            self.calls.append((job.name, idempotency_key))
            return DispatchReceipt(job.name, "id-1", "custom")

        async def dispatch(self, *a: Any, **k: Any) -> DispatchReceipt:
            raise AssertionError("not used")

        async def dispatch_many(
            self, items: Iterable[DispatchItem], **k: Any
        ) -> list[DispatchReceipt]:
            raise AssertionError("not used")

        def dispatch_many_sync(
            self, items: Iterable[DispatchItem], **k: Any
        ) -> list[DispatchReceipt]:
            raise AssertionError("not used")

    dispatcher = OnlySync()
    scheduler = Scheduler(one_schedule(), dispatcher)  # type: ignore[arg-type]
    scheduler.run_pending(T0)
    scheduler.run_pending(T0 + timedelta(minutes=1))
    assert dispatcher.calls == [("note", "daily@2025-06-02T09:00:00Z")]
