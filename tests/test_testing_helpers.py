"""jobs_core.testing: the recording dispatcher and the pytest plugin's fixtures."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from jobs_core import JobFailedError, JobPayloadError, JobRegistry, PermanentError
from jobs_core.testing import RecordingDispatcher, RecordingInstrumentation

jobs: JobRegistry[Any] = JobRegistry()


class Signup(BaseModel):
    email: str


sent: list[str] = []


@jobs.job("t.welcome")
def welcome(payload: Signup, ctx: Any) -> None:
    sent.append(payload.email)
    ctx["follow_up"] and ctx["jobs"].dispatch_sync(follow_up, {"email": payload.email})


@jobs.job("t.follow_up")
def follow_up(payload: Signup, ctx: Any) -> None:
    sent.append("follow:" + payload.email)


@jobs.job("t.broken")
def broken(payload: Signup, ctx: Any) -> None:
    raise PermanentError("always")


def sign_up(dispatcher: Any, email: str) -> None:
    dispatcher.dispatch_sync(welcome, {"email": email})


def test_recording_dispatcher_records_without_running(
    recording_dispatcher: RecordingDispatcher,
) -> None:
    sent.clear()
    sign_up(recording_dispatcher, "a@example.com")
    assert sent == []
    recorded = recording_dispatcher.assert_dispatched(welcome, {"email": "a@example.com"})
    assert recorded.data == {"email": "a@example.com"}
    recording_dispatcher.assert_dispatched(welcome)
    recording_dispatcher.assert_not_dispatched(follow_up)
    with pytest.raises(AssertionError, match="not with"):
        recording_dispatcher.assert_dispatched(welcome, {"email": "b@example.com"})
    with pytest.raises(AssertionError, match="was not dispatched"):
        recording_dispatcher.assert_dispatched(follow_up)
    with pytest.raises(AssertionError, match="dispatched 1 time"):
        recording_dispatcher.assert_not_dispatched(welcome)
    with pytest.raises(JobPayloadError):
        recording_dispatcher.dispatch_sync(welcome, {"mail": "typo"})
    assert len(recording_dispatcher.dispatched) == 1


def test_run_all_performs_recorded_jobs_and_their_follow_ups(
    recording_dispatcher: RecordingDispatcher,
) -> None:
    sent.clear()
    sign_up(recording_dispatcher, "a@example.com")
    ctx = {"follow_up": True, "jobs": recording_dispatcher}
    assert recording_dispatcher.run_all(ctx) == 2
    assert sent == ["a@example.com", "follow:a@example.com"]
    recording_dispatcher.dispatch_sync(broken, {"email": "x"})
    with pytest.raises(JobFailedError):
        recording_dispatcher.run_all(ctx)


def test_recording_dispatcher_honours_idempotency_keys(
    recording_dispatcher: RecordingDispatcher,
) -> None:
    first = recording_dispatcher.dispatch_sync(welcome, {"email": "a"}, idempotency_key="k")
    second = recording_dispatcher.dispatch_sync(welcome, {"email": "a"}, idempotency_key="k")
    assert not first.deduplicated and second.deduplicated
    assert len(recording_dispatcher.dispatched) == 1


def test_inline_dispatcher_fixture_runs_jobs(inline_dispatcher: Any) -> None:
    sent.clear()
    inline_dispatcher.context = {"follow_up": False, "jobs": inline_dispatcher}
    sign_up(inline_dispatcher, "c@example.com")
    assert sent == ["c@example.com"]
    # `.instrumentation` is the fixture's recorder (the default logging is added beside it).
    recorder = inline_dispatcher.instrumentation
    assert isinstance(recorder, RecordingInstrumentation)
    assert recorder.kinds() == ["scheduled", "started", "completed"]
