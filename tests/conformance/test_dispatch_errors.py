"""Every error `dispatch` raises is a `JobsError`, and every backend accepts the same failure
options (issue 18, C4, C28), on every backend.

A mistake in the call (not a `Job`, a negative or non-timedelta `delay`, a naive `run_at`, both
`delay` and `run_at`, an empty idempotency key, a `dispatch_many` item that is not a pair) is a
`DispatchArgumentError`, which is also the `TypeError` / `ValueError` these raised before; a
payload that cannot be serialised is a `JobPayloadError`. In every case nothing reaches the
backend, no handler runs, and `failed` (phase `schedule`) is recorded wherever the call names a
job.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel

from jobs_core import (
    DispatchArgumentError,
    JobConfigError,
    JobPayloadError,
    JobRegistry,
    JobsError,
    PermanentError,
    create_dispatcher,
)
from jobs_core.testing import RecordingInstrumentation

from .harness import BackendHarness, wait_until
from .models import Note, Runs, recording_job


class Loose(BaseModel):
    text: str = ""
    extra: Any = None


NOW = datetime.now(timezone.utc)

# name: (call(dispatcher, job), expected error class, the builtin it still is, names a job)
Call = Callable[[Any, Any], Any]
CASES: dict[str, tuple[Call, type[JobsError], type[Exception], bool]] = {
    "not-a-job": (
        lambda d, job: d.dispatch_sync(job.name, {"text": "x"}),
        DispatchArgumentError,
        TypeError,
        False,
    ),
    "negative-delay": (
        lambda d, job: d.dispatch_sync(job, {"text": "x"}, delay=timedelta(seconds=-1)),
        DispatchArgumentError,
        ValueError,
        True,
    ),
    "delay-not-timedelta": (
        lambda d, job: d.dispatch_sync(job, {"text": "x"}, delay=5),
        DispatchArgumentError,
        TypeError,
        True,
    ),
    "delay-and-run-at": (
        lambda d, job: d.dispatch_sync(job, {"text": "x"}, delay=timedelta(1), run_at=NOW),
        DispatchArgumentError,
        ValueError,
        True,
    ),
    "naive-run-at": (
        lambda d, job: d.dispatch_sync(job, {"text": "x"}, run_at=datetime.now()),
        DispatchArgumentError,
        ValueError,
        True,
    ),
    "run-at-not-datetime": (
        lambda d, job: d.dispatch_sync(job, {"text": "x"}, run_at="tomorrow"),
        DispatchArgumentError,
        TypeError,
        True,
    ),
    "empty-idempotency-key": (
        lambda d, job: d.dispatch_sync(job, {"text": "x"}, idempotency_key=""),
        DispatchArgumentError,
        ValueError,
        True,
    ),
    "idempotency-key-not-str": (
        lambda d, job: d.dispatch_sync(job, {"text": "x"}, idempotency_key=42),
        DispatchArgumentError,
        ValueError,
        True,
    ),
    "many-item-not-a-pair": (
        lambda d, job: d.dispatch_many_sync([(job, {"text": "x"}), job]),
        DispatchArgumentError,
        TypeError,
        False,
    ),
    "many-not-iterable": (
        lambda d, job: d.dispatch_many_sync(None),
        DispatchArgumentError,
        TypeError,
        False,
    ),
    "bytes-not-utf8": (
        lambda d, job: d.dispatch_sync(job, {"extra": b"\xff\xfe"}),
        JobPayloadError,
        ValueError,
        True,
    ),
    "inf": (
        lambda d, job: d.dispatch_sync(job, {"extra": [math.inf]}),
        JobPayloadError,
        ValueError,
        True,
    ),
    "datetime-in-any": (
        lambda d, job: d.dispatch_sync(job, {"extra": NOW}),
        JobPayloadError,
        ValueError,
        True,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.harnesses("in_process")
def test_every_dispatch_error_is_a_jobs_error_and_sends_nothing(
    harness: BackendHarness,
    jobs: JobRegistry[Any],
    events: RecordingInstrumentation,
    unique: str,
    case: str,
) -> None:
    call, error_class, builtin, names_job = CASES[case]
    runs = Runs()
    name = f"errors.{unique}"
    handler = recording_job(jobs, name, runs, payload=Loose)
    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        before = s.enqueued_count()
        with pytest.raises(JobsError) as caught:
            call(s.dispatcher, handler)
        assert type(caught.value) is error_class, repr(caught.value)
        assert isinstance(caught.value, builtin), "still what the same mistake raised before"
        assert s.enqueued_count() == before
        recorded = [(e.kind, e.phase) for e in events.for_job(name)]
        assert recorded == ([("failed", "schedule")] if names_job else []), recorded
        # Nothing refused may run: a marker dispatched after it is the only run once drained.
        s.dispatcher.dispatch_sync(handler, {"text": "marker"})
        wait_until(lambda: runs.count >= 1, what="the marker dispatched after the refused call")
        s.drain()
    assert runs.items == [Loose(text="marker")]


@pytest.mark.harnesses("in_process")
async def test_async_dispatch_raises_the_same_errors(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    runs = Runs()
    handler = recording_job(jobs, f"errors_async.{unique}", runs, payload=Loose)
    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        with pytest.raises(DispatchArgumentError):
            await s.dispatcher.dispatch(handler, {"text": "x"}, run_at=datetime.now())
        with pytest.raises(JobPayloadError):
            await s.dispatcher.dispatch(handler, {"extra": b"\xff"})
        with pytest.raises(DispatchArgumentError):
            await s.dispatcher.dispatch_many([handler])  # type: ignore[list-item]
        s.drain()
    assert runs.count == 0


def test_every_backend_accepts_the_same_failure_options(
    harness: BackendHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`raise_on_failure=False` (a give-up never raises from dispatch) is accepted everywhere;
    what a backend cannot honour (`on_error`, `raise_on_failure=True` where jobs run in a
    worker) is a `JobConfigError` naming the backend and what to use instead (C28)."""
    for key, value in harness.environment().items():
        monkeypatch.setenv(key, value)
    dispatcher: Any = create_dispatcher(settings=harness.settings(), raise_on_failure=False)
    assert dispatcher.raise_on_failure is False
    dispatcher.close()
    for options in ({"on_error": lambda error, job: None}, {"raise_on_failure": True}):
        if harness.durable:
            with pytest.raises(JobConfigError) as caught:
                create_dispatcher(settings=harness.settings(), **options)
            message = str(caught.value)
            assert harness.name in message and "on_failure=" in message
            assert "raise_on_failure=False" in message
        else:
            create_dispatcher(settings=harness.settings(), **options).close()  # type: ignore[attr-defined]


@pytest.mark.harnesses("in_process")
def test_a_give_up_reads_the_same_on_every_backend(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    """With the portable options (the harness's inline dispatcher is made with
    `raise_on_failure=False`), `dispatch` returns a receipt, `on_failure` runs once and the
    events are the same on every backend."""
    runs = Runs()
    name = f"giveup.{unique}"

    @jobs.job(name, on_failure=runs.fail)
    def handler(payload: Note, ctx: Any) -> None:
        runs.add()
        raise PermanentError("declined")

    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        receipt = s.dispatcher.dispatch_sync(handler, {"text": "x"})
        assert receipt.job_name == name and receipt.backend == harness.name
        wait_until(lambda: len(runs.failures) == 1, what="on_failure")
    # Each side in its own order: a fast worker can record `started` before the producer's
    # `scheduled` arrives.
    by_phase = {
        phase: [e.kind for e in events.for_job(name) if e.phase == phase]
        for phase in ("schedule", "execute")
    }
    assert by_phase == {"schedule": ["scheduled"], "execute": ["started", "failed"]}
