"""The harnesses' `drain()`, which every "nothing more ran" check of the contract tests stands
on: it must wait for what is still due (a delayed job, a retry waiting for its backoff), and
fail, not return, while the backend is busy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from jobs_core import JobRegistry, Retry
from jobs_core.testing import RecordingInstrumentation

from .harness import BackendHarness, wait_until
from .models import Note, Runs, failing_job, recording_job

DUE_IN = timedelta(milliseconds=300)


@pytest.mark.harnesses("all")
def test_drain_returns_once_a_delayed_job_and_a_pending_retry_have_run(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    runs, delayed = Runs(), Runs()
    retry = Retry(attempts=1, min_backoff=DUE_IN, max_backoff=DUE_IN, jitter=False)
    flaky = failing_job(
        jobs, f"drain.flaky.{unique}", runs, RuntimeError("once"), failures=1, retry=retry
    )
    later = recording_job(jobs, f"drain.later.{unique}", delayed)
    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        s.dispatcher.dispatch_sync(later, Note(text="later"), delay=DUE_IN)
        s.dispatcher.dispatch_sync(flaky, Note(text="flaky"))
        wait_until(lambda: runs.count >= 1, what="the flaky job's first run")
        s.drain()
        assert runs.count == 2, "drained: the retry has run"
        assert delayed.items == [Note(text="later")], "drained: the delayed job has run"


@pytest.mark.harnesses("all")
def test_drain_fails_while_a_job_is_still_due(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    """A job due in a minute keeps a durable backend busy: `drain` fails within its timeout.
    Inline runs it inside `dispatch` (C8), so there is nothing left, and `drain` returns."""
    if not getattr(harness, "drains_exactly", True):
        pytest.skip("the real Dev Server shows no queue to drain: its drain is a quiet window")
    runs = Runs()
    job = recording_job(jobs, f"drain.due.{unique}", runs)
    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        s.dispatcher.dispatch_sync(job, Note(text="in a minute"), delay=timedelta(minutes=1))
        if not harness.durable:
            s.drain(timeout=0.3)
            assert runs.count == 1
            return
        with pytest.raises(AssertionError):
            s.drain(timeout=0.3)
    assert runs.count == 0
