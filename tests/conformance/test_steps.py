"""C34–C39: durable steps, the same on every backend.

Each test defines a job with steps, runs it to its end on the harness's backend, and asserts
which step functions ran how often, what the handler saw, and the events the worker recorded.
Retries and sleeps are short (tens of milliseconds, one sleep of a second) so that the durable
backends really wait, and inline (which does not wait by default, C37) reads the same.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from jobs_core import (
    JobRegistry,
    PermanentError,
    Retry,
    StepError,
    StepFailedError,
    Steps,
    StepsSync,
)
from jobs_core.steps import rules
from jobs_core.testing import RecordingInstrumentation

from .harness import BackendHarness, wait_until
from .models import Note, Runs

FAST = dict(min_backoff=timedelta(milliseconds=20), max_backoff=timedelta(milliseconds=50))
SLEEP = timedelta(seconds=1)


class Calls:
    """How often each step function ran (thread-safe), and what the handler saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.seen: list[Any] = []

    def ran(self, name: str) -> int:
        with self._lock:
            self.counts[name] += 1
            return self.counts[name]

    def saw(self, value: Any) -> None:
        with self._lock:
            self.seen.append(value)

    def distinct(self) -> list[Any]:
        """What the handler saw, each once: code outside steps may run again on every
        delivery (C36), and Inngest calls a handler once per step."""
        with self._lock:
            return list(dict.fromkeys(self.seen))


def _executed(events: RecordingInstrumentation, name: str) -> list[tuple[str, str | None]]:
    return [(e.kind, e.step_id) for e in events.for_job(name) if e.phase == "execute"]


def _ended(events: RecordingInstrumentation, name: str, count: int = 1) -> bool:
    return sum(e.kind in ("completed", "failed") for e in events.for_job(name)) >= count


def _run(
    harness: BackendHarness,
    jobs: JobRegistry[Any],
    events: RecordingInstrumentation,
    job: Any,
    payload: dict[str, Any] | None = None,
    timeout: float = 30.0,
) -> None:
    with harness.session(jobs, context=None, instrumentation=events) as s:
        s.dispatcher.dispatch_sync(job, payload or {"text": "x"})
        wait_until(lambda: _ended(events, job.name), timeout, what=f"{job.name} to end")


# -- C34: a completed step returns its stored value ---------------------------------------------


def test_C34_completed_steps_return_their_stored_value_and_do_not_run_again(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    calls = Calls()

    def charge(text: str) -> Note:
        calls.ran("charge")
        return Note(text=f"charged {text}", n=7)

    def count(n: int) -> int:
        calls.ran(f"count{n}")
        return n * 10

    def receipt(charged: Note) -> str:
        if calls.ran("receipt") == 1:
            raise RuntimeError("mail server down")
        return f"sent for {charged.n}"

    @jobs.job(f"c34.{unique}", retry=Retry(attempts=2, **FAST))
    async def fulfil(order: Note, ctx: Any, step: Steps) -> None:
        charged = await step.run("charge", charge, order.text)
        first = await step.run("count", count, 1)  # one id twice: occurrences 0 and 1
        second = await step.run("count", count, 2)
        sent = await step.run("receipt", receipt, charged)
        calls.saw((charged, first, second, sent))

    _run(harness, jobs, events, fulfil)
    assert calls.counts == {"charge": 1, "count1": 1, "count2": 1, "receipt": 2}
    assert calls.seen == [(Note(text="charged x", n=7), 10, 20, "sent for 7")]
    assert isinstance(calls.seen[0][0], Note)  # read back through the return annotation


def test_C34_C37_misused_steps_give_up_at_once_with_a_step_error(
    harness: BackendHarness,
    jobs: JobRegistry[Any],
    events: RecordingInstrumentation,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each misuse is a non-retriable `StepError` naming the job and the step: `on_failure`
    once, `failed` recorded, no retry. The step limit is lowered to 50 here, so that a run
    over it takes no minute on Inngest (which calls the handler again for every step);
    tests/steps/test_rules.py checks the real limit, 1,000."""
    monkeypatch.setattr(rules, "MAX_STEPS", 50)
    runs = Runs()

    def value_of(v: Any) -> Any:
        return v

    async def nested(step: Steps) -> int:
        return await step.run("inner", value_of, 1)

    uses: dict[str, Any] = {
        "not-json": lambda step: step.run("out", value_of, object()),
        "too-big": lambda step: step.run("out", value_of, "x" * (4 * 1024 * 1024 + 1)),
        "unsafe-int": lambda step: step.run("out", value_of, {"n": 2**53}),
        "nested": lambda step: step.run("outer", nested, step),
        "empty-id": lambda step: step.run("", value_of, 1),
        "not-str-id": lambda step: step.run(7, value_of, 1),
        "year-sleep": lambda step: step.sleep("nap", timedelta(days=366)),
        "naive-until": lambda step: step.sleep_until("nap", datetime(2030, 1, 1)),
    }
    names = {}
    for use, call in uses.items():

        async def handler(p: Note, ctx: Any, step: Steps, call: Any = call) -> None:
            runs.add()
            await call(step)

        names[use] = jobs.define_job(
            f"c34bad.{use}.{unique}",
            handle=handler,
            retry=Retry(attempts=2, **FAST),
            on_failure=runs.fail,
        ).name

    def too_many(p: Note, ctx: Any, step: StepsSync) -> None:
        for i in range(51):
            step.run(f"s{i}", value_of, i)

    names["too-many"] = jobs.define_job(
        f"c34bad.too-many.{unique}", handle=too_many, on_failure=runs.fail
    ).name
    with harness.session(jobs, context=None, instrumentation=events) as s:
        for name in names.values():
            s.dispatcher.dispatch_sync(jobs[name], {"text": "x"})
        wait_until(
            lambda: all(_ended(events, n) for n in names.values()), 60, what="every misuse to end"
        )
        wait_until(lambda: len(runs.failures) == len(names), what="every on_failure call")
    by_job = {getattr(error, "job_name", None): error for error, _ in runs.failures}
    assert set(by_job) == set(names.values())
    step_of = {"nested": "inner", "empty-id": "''", "not-str-id": "7", "too-many": "s50"}
    step_of.update({"year-sleep": "nap", "naive-until": "nap"})
    for use, name in names.items():
        error = by_job[name]
        assert isinstance(error, StepError), (use, error)
        assert error.step_id == step_of.get(use, "out"), (use, error)
        assert name in str(error)
        kinds = [k for k, _ in _executed(events, name)]
        assert kinds.count("started") == 1 and kinds[-1] == "failed", (use, kinds)
        assert "retrying" not in kinds and "step.failed" not in kinds, (use, kinds)
    assert runs.count == len(uses)  # each async handler ran once: no retry
    unsafe = by_job[names["unsafe-int"]]
    assert unsafe.__cause__ is not None and "2**53" in str(unsafe.__cause__)


# -- C36: attempts count per step ---------------------------------------------------------------


def test_C36_attempts_count_per_step_and_start_again_when_a_step_completes(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    calls = Calls()

    def flaky(name: str) -> str:
        if calls.ran(name) <= 2:  # fails twice, then works: attempts=2 allows it per step
            raise RuntimeError(f"{name} not yet")
        return name

    @jobs.job(f"c36.{unique}", retry=Retry(attempts=2, **FAST))
    def both(p: Note, ctx: Any, step: StepsSync) -> None:
        calls.saw((step.run("a", flaky, "a"), step.run("b", flaky, "b")))

    _run(harness, jobs, events, both)
    assert calls.counts == {"a": 3, "b": 3}  # four failures in all, two per step
    assert calls.seen == [("a", "b")]
    failed = [(e.step_id, e.attempt) for e in events.for_job(both.name) if e.kind == "step.failed"]
    assert failed == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]


def test_C36_a_step_out_of_attempts_raises_step_failed_error_which_the_handler_may_catch(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    calls = Calls()
    runs = Runs()

    def notify() -> None:
        raise ConnectionError(f"sms gateway down ({calls.ran('notify')})")

    def finish() -> str:
        calls.ran("finish")
        return "done"

    @jobs.job(f"c36c.{unique}", retry=Retry(attempts=2, **FAST), on_failure=runs.fail)
    async def tolerant(p: Note, ctx: Any, step: Steps) -> None:
        try:
            await step.run("notify", notify)
        except StepFailedError as error:
            calls.saw((error.step_id, str(error.error)))
        calls.saw(await step.run("finish", finish))

    _run(harness, jobs, events, tolerant)
    assert calls.counts == {"notify": 3, "finish": 1}
    assert calls.distinct() == [("notify", "ConnectionError: sms gateway down (3)"), "done"]
    assert runs.failures == []
    assert _executed(events, tolerant.name)[-1] == ("completed", None)


def test_C36_an_uncaught_step_failure_gives_up_the_run_and_on_failure_runs_once(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    calls = Calls()
    runs = Runs()

    def before() -> int:
        return calls.ran("before")

    def charge() -> None:
        raise RuntimeError(f"card declined ({calls.ran('charge')})")

    def after() -> None:
        calls.ran("after")

    @jobs.job(f"c36u.{unique}", retry=Retry(attempts=1, **FAST), on_failure=runs.fail)
    def strict(p: Note, ctx: Any, step: StepsSync) -> None:
        step.run("before", before)
        step.run("charge", charge)
        step.run("after", after)

    _run(harness, jobs, events, strict)
    wait_until(lambda: len(runs.failures) == 1, what="on_failure")
    assert calls.counts == {"before": 1, "charge": 2}
    [(error, payload)] = runs.failures
    assert isinstance(error, StepFailedError) and error.step_id == "charge"
    assert "card declined (2)" in str(error)
    assert payload == Note(text="x")
    kinds = [k for k, _ in _executed(events, strict.name)]
    assert kinds.count("failed") == 1 and kinds[-1] == "failed"


def test_C36_a_permanent_error_in_a_step_gives_up_without_a_retry(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    calls = Calls()
    runs = Runs()

    def refuse() -> None:
        calls.ran("refuse")
        raise PermanentError("no such customer")

    @jobs.job(f"c36p.{unique}", retry=Retry(attempts=3, **FAST), on_failure=runs.fail)
    async def hopeless(p: Note, ctx: Any, step: Steps) -> None:
        await step.run("refuse", refuse)

    _run(harness, jobs, events, hopeless)
    wait_until(lambda: len(runs.failures) == 1, what="on_failure")
    assert calls.counts == {"refuse": 1}
    assert isinstance(runs.failures[0][0], PermanentError)


# -- C37: sleeps ----------------------------------------------------------------------------------


def test_C37_a_sleep_resumes_no_earlier_than_asked_and_is_not_slept_again(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    calls = Calls()
    times: dict[str, float] = {}

    def mark(name: str) -> None:
        calls.ran(name)
        times.setdefault(name, time.monotonic())

    def flaky_after() -> None:
        mark("after")
        if calls.counts["after"] == 1:
            raise RuntimeError("once")

    @jobs.job(f"c37.{unique}", retry=Retry(attempts=2, **FAST))
    async def napper(p: Note, ctx: Any, step: Steps) -> None:
        await step.run("before", mark, "before")
        await step.sleep("nap", SLEEP)
        await step.run("after", flaky_after)

    started = time.monotonic()
    _run(harness, jobs, events, napper)
    took = time.monotonic() - started
    assert calls.counts == {"before": 1, "after": 2}
    slept = times["after"] - times["before"]
    if harness.durable:
        assert slept >= SLEEP.total_seconds() - 0.05, slept
        assert took < 2 * SLEEP.total_seconds() + 10, took  # slept once, not again on the retry
    else:
        assert slept < SLEEP.total_seconds() / 2, slept  # inline: a sleep returns at once
    kinds = _executed(events, napper.name)
    assert kinds.count(("run.suspended", "nap")) == 1
    assert kinds.count(("run.resumed", "nap")) == 1


def test_C37_a_sleeping_run_holds_no_worker(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    """More sleeping runs than the worker has threads, then a plain job: it runs while they
    sleep (a sleeping run holds no thread and no slot)."""
    if not harness.durable:
        return  # inline runs one dispatch at a time, and its sleeps return at once
    runs = Runs()

    @jobs.job(f"c37s.{unique}")
    async def sleeper(p: Note, ctx: Any, step: Steps) -> None:
        await step.sleep("long", timedelta(seconds=5))
        runs.add(("woke", p.n))

    @jobs.job(f"c37q.{unique}")
    def quick(p: Note, ctx: Any) -> None:
        runs.add("quick")

    with harness.session(jobs, context=None, instrumentation=events) as s:
        for n in range(6):
            s.dispatcher.dispatch_sync(sleeper, {"text": "zz", "n": n})
        wait_until(
            lambda: events.kinds(sleeper.name).count("run.suspended") == 6,
            what="six runs to go to sleep",
        )
        s.dispatcher.dispatch_sync(quick, {"text": "now"})
        wait_until(lambda: "quick" in runs.items, 4, what="the plain job, while six runs sleep")
        assert runs.items == ["quick"]
        wait_until(lambda: runs.count == 7, 30, what="the sleepers to wake")


# -- C38: parallel steps --------------------------------------------------------------------------


def test_C38_steps_awaited_together_run_concurrently_and_are_each_kept(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    calls = Calls()
    spans: dict[str, tuple[float, float]] = {}

    async def slow(name: str) -> str:
        calls.ran(name)
        began = time.monotonic()
        await asyncio.sleep(0.3)
        spans[name] = (began, time.monotonic())
        return name.upper()

    def then_fail_once() -> None:
        if calls.ran("then") == 1:
            raise RuntimeError("replay the handler")

    @jobs.job(f"c38.{unique}", retry=Retry(attempts=2, **FAST))
    async def fan(p: Note, ctx: Any, step: Steps) -> None:
        values = await asyncio.gather(*(step.run(f"part-{i}", slow, f"p{i}") for i in range(3)))
        calls.saw(tuple(values))
        await step.run("then", then_fail_once)

    _run(harness, jobs, events, fan)
    assert calls.counts == {"p0": 1, "p1": 1, "p2": 1, "then": 2}
    assert calls.distinct() == [("P0", "P1", "P2")]  # kept, and returned again on the retry
    assert max(b for b, _ in spans.values()) < min(e for _, e in spans.values()), spans
    keys = {e.step_id for e in events.for_job(fan.name) if e.kind == "step.completed"}
    assert keys == {"part-0", "part-1", "part-2", "then"}


# -- C39: the same events on every backend --------------------------------------------------------


def test_C39_the_step_events_come_in_the_same_sequence_on_every_backend(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    calls = Calls()

    def work(name: str) -> str:
        if calls.ran(name) == 1 and name == "b":
            raise RuntimeError("b once")
        return name

    @jobs.job(f"c39.{unique}", retry=Retry(attempts=2, **FAST))
    async def story(p: Note, ctx: Any, step: Steps) -> None:
        await step.run("a", work, "a")
        await step.run("b", work, "b")
        await step.sleep("nap", timedelta(milliseconds=200))
        await step.run("c", work, "c")

    @jobs.job(f"c39plain.{unique}")
    def plain(p: Note, ctx: Any) -> None:
        calls.ran("plain")

    with harness.session(jobs, context=None, instrumentation=events) as s:
        s.dispatcher.dispatch_sync(story, {"text": "x"})
        s.dispatcher.dispatch_sync(plain, {"text": "x"})
        wait_until(lambda: _ended(events, story.name) and _ended(events, plain.name))
    assert _executed(events, story.name) == [
        ("started", None),
        ("step.started", "a"),
        ("step.completed", "a"),
        ("step.started", "b"),
        ("step.failed", "b"),
        ("step.started", "b"),
        ("step.completed", "b"),
        ("run.suspended", "nap"),
        ("run.resumed", "nap"),
        ("step.started", "c"),
        ("step.completed", "c"),
        ("completed", None),
    ]
    attempts = [e.attempt for e in events.for_job(story.name) if e.step_id == "b"]
    assert attempts == [0, 0, 1, 1]
    assert _executed(events, plain.name) == [("started", None), ("completed", None)]


def test_C39_a_sleep_until_a_past_time_resumes_at_once(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    calls = Calls()

    @jobs.job(f"c39p.{unique}")
    def late(p: Note, ctx: Any, step: StepsSync) -> None:
        step.sleep_until("past", datetime(2020, 1, 1, tzinfo=timezone.utc))
        calls.ran("after")

    _run(harness, jobs, events, late)
    assert calls.counts == {"after": 1}
    assert [k for k, _ in _executed(events, late.name)] == [
        "started",
        "run.suspended",
        "run.resumed",
        "completed",
    ]
