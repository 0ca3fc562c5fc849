"""C4–C9: what `dispatch` accepts, refuses, delays and deduplicates, on every backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from jobs_core import DispatchError, JobPayloadError, JobRegistry
from jobs_core.testing import RecordingInstrumentation

from .harness import BackendHarness, keeps_first_of_a_key, wait_until
from .models import Note, Runs, recording_job


@contextmanager
def _recording(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, name: str
) -> Iterator[tuple[Any, Any, Runs]]:
    """A session of `harness` with a job `name` that records in the yielded `Runs` each payload
    it runs with: what most dispatching tests start from."""
    runs = Runs()
    job = recording_job(jobs, name, runs)
    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        yield s, job, runs


@pytest.mark.harnesses("all")
def test_C4_invalid_payload_raises_and_enqueues_nothing(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    with _recording(harness, jobs, events, f"c4.{unique}") as (s, job, runs):
        before = s.enqueued_count()
        with pytest.raises(JobPayloadError) as caught:
            s.dispatcher.dispatch_sync(job, {"text": 123, "n": "not a number"})
        assert caught.value.job_name == job.name
        assert {e["loc"] for e in caught.value.errors} == {("text",), ("n",)}
        assert job.name in str(caught.value)
        assert s.enqueued_count() == before
        failed = [e for e in events.for_job(job.name) if e.kind == "failed"]
        assert [(e.phase, e.job_name) for e in failed] == [("schedule", job.name)]
        assert "scheduled" not in events.kinds(job.name)
        _marker_is_the_only_run(s, job, runs)


def _marker_is_the_only_run(s: Any, job: Any, runs: Runs) -> None:
    """Prove that nothing refused before ran: dispatch a marker after it, wait for the marker,
    drain the backend (nothing queued, delayed or in flight is left), and find the marker the
    only run."""
    s.dispatcher.dispatch_sync(job, Note(text="marker"))
    wait_until(lambda: runs.count >= 1, what="the marker dispatched after the refused one")
    s.drain()
    assert runs.items == [Note(text="marker")]


@pytest.mark.parametrize(
    "bad",
    [None, "text", ["text"], 42, Runs(), "model-of-another-class"],
    ids=["none", "str", "list", "int", "other-object", "model-of-another-class"],
)
@pytest.mark.harnesses("in_process")
def test_C5_payload_must_be_own_model_or_mapping(
    harness: BackendHarness,
    jobs: JobRegistry[Any],
    events: RecordingInstrumentation,
    unique: str,
    bad: Any,
) -> None:
    from .models import Address

    if bad == "model-of-another-class":
        bad = Address(street="s", city="c")
    with _recording(harness, jobs, events, f"c5.{unique}") as (s, job, runs):
        with pytest.raises(JobPayloadError, match=job.name):
            s.dispatcher.dispatch_sync(job, bad)
        receipt = s.dispatcher.dispatch_sync(job, Note(text="model ok"))
        assert receipt.job_name == job.name and receipt.backend == harness.name
        wait_until(lambda: runs.count == 1, what="the valid dispatch to run")
    assert runs.items == [Note(text="model ok")]


@pytest.mark.harnesses("in_process")
async def test_C5_async_dispatch_validates_the_same(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    with _recording(harness, jobs, events, f"c5a.{unique}") as (s, job, runs):
        with pytest.raises(JobPayloadError):
            await s.dispatcher.dispatch(job, ["not", "a", "mapping"])  # type: ignore[arg-type]
        receipt = await s.dispatcher.dispatch(job, {"text": "async ok"})
        assert receipt.dispatch_id
        wait_until(lambda: runs.count == 1, what="the async dispatch to run")


@pytest.mark.harnesses("all")
def test_C6_dispatch_many_sends_none_when_one_is_bad(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    with _recording(harness, jobs, events, f"c6.{unique}") as (s, job, runs):
        before = s.enqueued_count()
        batch = [(job, {"text": "a"}), (job, {"text": "b"}), (job, {"n": "bad"})]
        with pytest.raises(JobPayloadError):
            s.dispatcher.dispatch_many_sync(batch)
        assert s.enqueued_count() == before
        s.drain()  # had "a" or "b" been sent, it would have run by now
        assert runs.count == 0

        receipts = s.dispatcher.dispatch_many_sync(
            [(job, {"text": str(i), "n": i}) for i in range(5)]
        )
        assert len({r.dispatch_id for r in receipts}) == 5
        wait_until(lambda: runs.count == 5, what="five jobs of the batch")
        s.drain()
    assert sorted(p.n for p in runs.items) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("hanging", [False, True], ids=["refused", "hanging"])
def test_C7_unreachable_backend_raises_dispatch_error_within_timeout(
    harness: BackendHarness, jobs: JobRegistry[Any], unique: str, hanging: bool
) -> None:
    runs = Runs()
    job = recording_job(jobs, f"c7.{unique}", runs)
    timeout = 1.5
    dispatcher_cm = harness.unreachable_dispatcher(jobs, timeout=timeout, hanging=hanging)
    if dispatcher_cm is None:
        pytest.skip(f"C7 does not apply to {harness.name}: it has no broker to be unreachable")
    with dispatcher_cm as dispatcher:
        events = RecordingInstrumentation()
        dispatcher.instrumentation = events  # type: ignore[attr-defined]
        started = time.monotonic()
        with pytest.raises(DispatchError) as caught:
            dispatcher.dispatch_sync(job, {"text": "never"})
        elapsed = time.monotonic() - started
        assert caught.value.job_name == job.name
        assert elapsed < timeout + 2.0, f"dispatch took {elapsed:.1f}s with timeout {timeout}s"
        assert [(e.kind, e.phase) for e in events.for_job(job.name)] == [("failed", "schedule")]
        with pytest.raises(DispatchError):
            dispatcher.dispatch_many_sync([(job, {"text": "x"}), (job, {"text": "y"})])


@pytest.mark.harnesses("all")
def test_C8_delay_is_honoured(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    # The one wait here is the clause's own: a delayed job must be seen not to start early.
    # Half a second is far above the backends' timer slack (50 ms allowed below), and no drain
    # can shorten it: the jobs are due only then.
    delay = timedelta(seconds=0.5)
    with _recording(harness, jobs, events, f"c8.{unique}") as (s, job, runs):
        sent = time.monotonic()
        s.dispatcher.dispatch_sync(job, {"text": "delayed"}, delay=delay)
        at = datetime.now(timezone.utc) + delay
        sent_at = time.monotonic()
        s.dispatcher.dispatch_sync(job, {"text": "run_at"}, run_at=at)
        if not harness.durable:
            # Inline runs at once, as documented.
            assert runs.count == 2
            return
        wait_until(lambda: runs.count == 2, timeout=20, what="both delayed jobs")
    first, second = runs.calls
    by_text = {item.text: t for t, item in runs.calls}
    assert by_text["delayed"] - sent >= delay.total_seconds() - 0.05, runs.calls
    assert by_text["run_at"] - sent_at >= delay.total_seconds() - 0.05, runs.calls
    assert first and second


@pytest.mark.harnesses("in_process")
def test_C8_naive_run_at_and_negative_delay_are_refused(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    with _recording(harness, jobs, events, f"c8b.{unique}") as (s, job, runs):
        with pytest.raises(ValueError, match="timezone-aware"):
            s.dispatcher.dispatch_sync(job, {"text": "x"}, run_at=datetime.now())
        with pytest.raises(ValueError, match="negative"):
            s.dispatcher.dispatch_sync(job, {"text": "x"}, delay=timedelta(seconds=-1))
        s.drain()
    assert runs.count == 0


@pytest.mark.harnesses("all")
def test_C9_same_idempotency_key_runs_once(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    with _recording(harness, jobs, events, f"c9.{unique}") as (s, job, runs):
        first = s.dispatcher.dispatch_sync(job, {"text": "one"}, idempotency_key=f"k-{unique}")
        second = s.dispatcher.dispatch_sync(job, {"text": "two"}, idempotency_key=f"k-{unique}")
        other = s.dispatcher.dispatch_sync(job, {"text": "three"}, idempotency_key=f"o-{unique}")
        assert not first.deduplicated
        assert not other.deduplicated
        # The producer knows a repeat where keys are claimed before sending (Redis, in
        # process); Inngest's Event API does not say. Either way the ids join (C9).
        assert second.deduplicated is (harness.name != "inngest")
        assert second.dispatch_id == first.dispatch_id != other.dispatch_id
        wait_until(lambda: runs.count == 2, what="the two distinct keys to run")
        s.drain()  # the repeat, had it been sent, would have run by now
    ran = sorted(p.text for p in runs.items)
    assert ran == ["one", "three"] or (
        not keeps_first_of_a_key(harness) and ran == ["three", "two"]
    )
