"""C10–C19: how a worker runs, retries, gives up and reports, the same on every backend."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest

from jobs_core import JobPayloadError, JobRegistry, PermanentError, Retry, RetryLater
from jobs_core.testing import RecordingInstrumentation

from .harness import BackendHarness, wait_until
from .models import Address, Colour, Note, Rich, Runs, failing_job, recording_job

FAST = dict(min_backoff=timedelta(milliseconds=20), max_backoff=timedelta(milliseconds=50))


def _attempts(events: RecordingInstrumentation, name: str) -> list[int]:
    return [e.attempt for e in events.for_job(name) if e.kind == "started"]


def _executed(events: RecordingInstrumentation, name: str) -> list[str]:
    """The worker's event kinds: the producer records `scheduled` after its enqueue returns,
    which a fast worker can beat (C19), so the last kinds of a job are read from these."""
    return [e.kind for e in events.for_job(name) if e.phase == "execute"]


def _finished(events: RecordingInstrumentation, name: str, count: int = 1) -> bool:
    return sum(e.kind in ("completed", "failed") for e in events.for_job(name)) >= count


def _run_to_the_end(
    session: Any, events: RecordingInstrumentation, handler: Any, payload: dict[str, Any]
) -> None:
    """Dispatch `handler` once and wait until it has completed or given up."""
    session.dispatcher.dispatch_sync(handler, payload)
    wait_until(
        lambda: _finished(events, handler.name), what=f"{handler.name} to complete or give up"
    )


@pytest.mark.harnesses("all")
def test_C10_payload_survives_the_trip_unchanged(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    runs = Runs()
    handler = recording_job(jobs, f"c10.{unique}", runs, payload=Rich)
    original = {
        "when": datetime(
            2026, 3, 4, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=5, minutes=30))
        ),
        "day": date(2024, 2, 29),
        "ident": uuid4(),
        "amount": Decimal("12345678901234567890.000000001"),
        "colour": Colour.BLUE,
        "address": Address(street="Straße 1", city="Zürich"),
        "tags": ["α", "β", "🚀"],
        "nickname": None,
        "text": 'naïve café — 日本語 \u0000 \n"quoted"',
    }
    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        s.dispatcher.dispatch_sync(handler, original)
        s.dispatcher.dispatch_sync(handler, Rich.model_validate(original))
        wait_until(lambda: runs.count == 2, what="both rich payloads")
    expected = Rich.model_validate(original)
    for received in runs.items:
        assert isinstance(received, Rich)
        assert received == expected
        assert received.when.utcoffset() == timedelta(hours=5, minutes=30)
        assert received.amount == Decimal("12345678901234567890.000000001")


@pytest.mark.harnesses("in_process")
def test_C10_integers_beyond_2_53_are_refused_at_dispatch(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    runs = Runs()
    handler = recording_job(jobs, f"c10i.{unique}", runs)
    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        before = s.enqueued_count()
        for unsafe in (2**53, -(2**53), 2**53 + 1):
            with pytest.raises(JobPayloadError) as caught:
                s.dispatcher.dispatch_sync(handler, {"text": "big", "n": unsafe})
            assert [e["loc"] for e in caught.value.errors] == [("n",)]
        assert s.enqueued_count() == before
        s.dispatcher.dispatch_sync(handler, {"text": "edge", "n": 2**53 - 1})
        wait_until(lambda: runs.count == 1, what="the largest safe integer to arrive")
        s.drain()  # the refused ones, had any been sent, would have run by now
    assert runs.items == [Note(text="edge", n=2**53 - 1)]


@pytest.fixture
def fail_to_the_end(
    harness: BackendHarness,
    jobs: JobRegistry[Any],
    events: RecordingInstrumentation,
    unique: str,
) -> Callable[..., tuple[str, Runs]]:
    """`fail_to_the_end(prefix, error, **options)`: define a `failing_job` (`error`, the options
    `options`) named `<prefix>.<unique>`, whose `on_failure` is recorded, run it once to its end
    in a session of `harness`, drain the backend, and return its name and `Runs`. After the
    drain nothing is left that could run the job again (a retry, a message redelivered after
    the end): what the test counts then is final."""

    def fail(
        prefix: str, error: Any, *, payload: dict[str, Any] | None = None, **options: Any
    ) -> tuple[str, Runs]:
        name = f"{prefix}.{unique}"
        runs = Runs()
        handler = failing_job(jobs, name, runs, error, on_failure=runs.fail, **options)
        with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
            _run_to_the_end(s, events, handler, payload or {"text": "x"})
            s.drain()
        return name, runs

    return fail


@pytest.mark.harnesses("all")
def test_C11_always_failing_runs_attempts_plus_one_then_on_failure_once(
    fail_to_the_end: Callable[..., tuple[str, Runs]], events: RecordingInstrumentation
) -> None:
    name, runs = fail_to_the_end(
        "c11",
        lambda n: RuntimeError(f"boom {n}"),  # the n-th run's: the hook must get the last one
        payload={"text": "fail"},
        retry=Retry(attempts=3, **FAST),
    )
    assert runs.count == 4
    assert _attempts(events, name) == [0, 1, 2, 3]
    assert len(runs.failures) == 1
    error, payload = runs.failures[0]
    assert isinstance(error, RuntimeError) and str(error) == "boom 4"
    assert payload == Note(text="fail")
    kinds = events.kinds(name)
    assert kinds.count("started") == 4
    assert kinds.count("retrying") == 3
    assert kinds.count("failed") == 1
    assert "completed" not in kinds


@pytest.mark.parametrize("attempts", [0, 1])
@pytest.mark.harnesses("in_process")
def test_C11_small_attempt_counts(
    fail_to_the_end: Callable[..., tuple[str, Runs]],
    events: RecordingInstrumentation,
    attempts: int,
) -> None:
    retry = Retry(attempts=attempts, **FAST)
    name, runs = fail_to_the_end("c11s", ValueError("always"), retry=retry)
    assert runs.count == attempts + 1
    assert _attempts(events, name) == list(range(attempts + 1))


@pytest.mark.harnesses("in_process")
def test_C12_fails_k_times_then_succeeds(
    fail_to_the_end: Callable[..., tuple[str, Runs]], events: RecordingInstrumentation
) -> None:
    retry = Retry(attempts=3, **FAST)
    name, runs = fail_to_the_end("c12", ConnectionError("flaky"), failures=2, retry=retry)
    assert runs.count == 3
    assert runs.failures == []
    assert _executed(events, name)[-1] == "completed"
    assert _attempts(events, name) == [0, 1, 2]


@pytest.mark.harnesses("in_process")
def test_C13_permanent_error_runs_once(
    fail_to_the_end: Callable[..., tuple[str, Runs]], events: RecordingInstrumentation
) -> None:
    name, runs = fail_to_the_end(
        "c13",
        PermanentError("card declined"),
        asynchronous=True,
        retry=Retry(attempts=4, **FAST),
    )
    assert runs.count == 1
    assert len(runs.failures) == 1 and isinstance(runs.failures[0][0], PermanentError)
    assert _executed(events, name)[-2:] == ["started", "failed"]
    assert "retrying" not in events.kinds(name)


@pytest.mark.harnesses("in_process")
def test_C14_retry_later_waits_and_counts_as_an_attempt(
    harness: BackendHarness,
    fail_to_the_end: Callable[..., tuple[str, Runs]],
    events: RecordingInstrumentation,
) -> None:
    wait = 0.6
    name, runs = fail_to_the_end(
        "c14", RetryLater(timedelta(seconds=wait)), retry=Retry(attempts=1, **FAST)
    )
    assert runs.count == 2, "RetryLater counts against attempts=1: two runs, then give up"
    assert len(runs.failures) == 1 and isinstance(runs.failures[0][0], RetryLater)
    retrying = [e for e in events.for_job(name) if e.kind == "retrying"]
    assert retrying[0].retry_in == timedelta(seconds=wait)
    if harness.durable:
        assert runs.gaps()[0] >= wait - 0.05, runs.gaps()


@pytest.mark.harnesses("in_process")
def test_C15_backoff_schedule_is_honoured(
    harness: BackendHarness,
    fail_to_the_end: Callable[..., tuple[str, Runs]],
    events: RecordingInstrumentation,
) -> None:
    retry = Retry(
        attempts=3,
        min_backoff=timedelta(milliseconds=250),
        max_backoff=timedelta(milliseconds=600),
        jitter=False,
    )
    name, runs = fail_to_the_end("c15", RuntimeError("again"), retry=retry)
    expected = [0.25, 0.5, 0.6]  # min(max, min * 2**(k-1)) for k = 1, 2, 3
    announced = [e.retry_in for e in events.for_job(name) if e.kind == "retrying"]
    assert announced == [timedelta(seconds=s) for s in expected]
    gaps = runs.gaps()
    if harness.durable:
        for gap, want in zip(gaps, expected):
            assert gap >= want - 0.05, (gaps, expected)
    else:
        assert all(gap < 0.2 for gap in gaps), f"inline should not wait by default: {gaps}"


@pytest.mark.harnesses("in_process")
def test_C15_jitter_stays_within_half(harness: BackendHarness) -> None:
    retry = Retry(attempts=5, min_backoff=timedelta(seconds=1), max_backoff=timedelta(seconds=10))
    for k, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0)]:
        assert retry.base_backoff(k) == timedelta(seconds=base)
        samples = [retry.backoff(k).total_seconds() for _ in range(200)]
        assert all(base * 0.5 <= s <= base for s in samples)
        assert max(samples) - min(samples) > 0, "jitter on: the waits vary"


def test_C16_payload_that_no_longer_fits_is_not_retried(
    harness: BackendHarness,
    jobs: JobRegistry[Any],
    events: RecordingInstrumentation,
    unique: str,
) -> None:
    runs = Runs()
    name = f"c16.{unique}"
    retry = Retry(attempts=3, **FAST)
    handler = recording_job(
        jobs, name, runs, retry=retry, on_failure=lambda e, p, c: runs.fail(e, p)
    )
    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        s.send_raw(name, {"text": ["not", "a", "str"], "n": "x"})
        wait_until(lambda: _finished(events, name), what="the bad message to fail")
        s.dispatcher.dispatch_sync(handler, {"text": "next"})
        wait_until(lambda: runs.count == 1, what="the next job to run")
        s.drain()  # a retry of the bad message, had one been sent, would have run by now
    assert runs.items == [Note(text="next")]
    assert len(runs.failures) == 1
    error, raw = runs.failures[0]
    assert isinstance(error, JobPayloadError) and error.job_name == name
    assert raw == {"text": ["not", "a", "str"], "n": "x"}
    kinds = events.kinds(name)
    assert "retrying" not in kinds and kinds.count("failed") == 1


def test_C17_unknown_job_name_is_logged_kept_and_skipped(
    harness: BackendHarness,
    jobs: JobRegistry[Any],
    events: RecordingInstrumentation,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = Runs()
    known = f"c17.{unique}"
    unknown = f"c17.unknown.{unique}"
    handler = recording_job(jobs, known, runs)
    caplog.set_level(logging.ERROR)
    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        s.send_raw(unknown, {"text": "who?"})
        wait_until(lambda: unknown in s.dead_letters(), what="the unknown job in the dead letters")
        s.dispatcher.dispatch_sync(handler, {"text": "after"})
        wait_until(lambda: runs.count == 1, what="a known job after the unknown one")
    assert runs.items == [Note(text="after")]
    if not harness.reports_unknown_jobs:
        # Inngest: an event that no function takes never reaches the app, so there is nothing
        # for the worker to log or record; Inngest keeps it in its event log (the dead-letter
        # check above), as the README's backend table says.
        assert events.for_job(unknown) == []
        return
    assert any(unknown in r.getMessage() for r in caplog.records), "the name is logged"
    assert [e.kind for e in events.for_job(unknown)] == ["failed"]


@pytest.mark.parametrize("handler_kind", ["sync", "async"])
@pytest.mark.parametrize("context_kind", ["sync-factory", "async-factory", "object"])
@pytest.mark.harnesses("in_process")
def test_C18_sync_and_async_handlers_and_contexts(
    harness: BackendHarness,
    jobs: JobRegistry[Any],
    events: RecordingInstrumentation,
    unique: str,
    handler_kind: str,
    context_kind: str,
) -> None:
    runs = Runs()
    name = f"c18.{handler_kind}.{context_kind}.{unique}"
    seen: list[Any] = []

    async def async_factory() -> dict[str, Any]:
        return runs.make_context()

    context: Any = {
        "sync-factory": runs.make_context,
        "async-factory": async_factory,
        "object": {"runs": runs, "kind": "object"},
    }[context_kind]

    if handler_kind == "sync":

        def handler(payload: Note, ctx: Any) -> None:
            seen.append(ctx)
            ctx["runs"].add(payload)
            if payload.n == 0 and ctx["runs"].count == 1:
                raise RuntimeError("once")

    else:

        async def handler(payload: Note, ctx: Any) -> None:  # type: ignore[misc]
            seen.append(ctx)
            ctx["runs"].add(payload)
            if payload.n == 0 and ctx["runs"].count == 1:
                raise RuntimeError("once")

    job = jobs.define_job(name, handle=handler, retry=Retry(attempts=2, **FAST))
    with harness.session(jobs, context=context, instrumentation=events) as s:
        s.dispatcher.dispatch_sync(job, {"text": "x", "n": 0})
        wait_until(lambda: _finished(events, name), what="the job to complete")
    assert runs.count == 2
    assert _executed(events, name)[-1] == "completed"
    if context_kind == "object":
        assert all(ctx is context for ctx in seen)
    else:
        assert runs.contexts == 2, "the context factory is called for each run"
        assert seen[0] is not seen[1]


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("ok", ["scheduled", "started", "completed"]),
        ("flaky", ["scheduled", "started", "retrying", "started", "completed"]),
        ("permanent", ["scheduled", "started", "failed"]),
        ("exhausted", ["scheduled", "started", "retrying", "started", "failed"]),
    ],
)
@pytest.mark.harnesses("in_process")
def test_C19_same_event_sequence_on_every_backend(
    harness: BackendHarness,
    jobs: JobRegistry[Any],
    events: RecordingInstrumentation,
    unique: str,
    scenario: str,
    expected: list[str],
) -> None:
    runs = Runs()
    name = f"c19.{scenario}.{unique}"

    @jobs.job(name, retry=Retry(attempts=1, **FAST))
    def handler(payload: Note, ctx: Any) -> None:
        n = runs.add()
        if scenario == "flaky" and n == 1:
            raise RuntimeError("first time")
        if scenario == "permanent":
            raise PermanentError("no")
        if scenario == "exhausted":
            raise RuntimeError("always")

    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        receipt = s.dispatcher.dispatch_sync(handler, {"text": scenario})
        wait_until(lambda: _finished(events, name), what=f"scenario {scenario}")
    # The producer records `scheduled` after its enqueue returns, while the worker may already
    # be recording the run: across the two sides the order is not defined, within each it is.
    recorded = sorted(events.for_job(name), key=lambda e: e.phase != "schedule")
    assert [e.kind for e in recorded] == expected
    assert {e.backend for e in recorded} == {harness.name}
    assert {e.dispatch_id for e in recorded} == {receipt.dispatch_id}
    assert [e.phase for e in recorded] == ["schedule"] + ["execute"] * (len(expected) - 1)
    assert all(e.duration is not None for e in recorded if e.kind in ("completed", "failed"))
