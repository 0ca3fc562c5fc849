"""Testing helpers: a dispatcher that records instead of running, a recording instrumentation,
and a pytest plugin (fixtures `recording_dispatcher` and `inline_dispatcher`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from .dispatch.dispatcher import BaseDispatcher
from .dispatch.idempotency import MemoryIdempotencyStore
from .dispatch.prepared import PreparedJob
from .errors import JobFailedError
from .instrumentation import Instrumentation, JobEvent
from .jobs.job import Job
from .steps.store import MemoryStepStore
from .worker import ContextSource, Delivery, JobWorker, StepsSetup

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixtures
    pytest = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class RecordedDispatch:
    """One dispatch that `RecordingDispatcher` accepted: the validated payload and its options."""

    job: Job[Any, Any]
    payload: BaseModel
    data: Any
    dispatch_id: str
    prepared: PreparedJob

    @property
    def job_name(self) -> str:
        return self.job.name


class RecordingDispatcher(BaseDispatcher):
    """Validates and records dispatches without running them: assert on what a use case sent.

    Validation, idempotency keys and `scheduled` events are exactly as on a real backend.
    """

    backend_name = "recording"

    def __init__(self, instrumentation: Instrumentation | None = None, **options: Any) -> None:
        super().__init__(
            instrumentation=instrumentation or RecordingInstrumentation(),
            idempotency=MemoryIdempotencyStore(),
            **options,
        )
        self.dispatched: list[RecordedDispatch] = []
        self.steps = MemoryStepStore()
        """Where `run_all` keeps the steps of jobs with steps (as the inline backend does)."""
        self.waits = self.steps.waits
        """Runs parked by `run_all` at `step.wait_for_event`: a `send` resumes them (recorded,
        then run by the next `run_all`); their timeouts do not pass on their own."""

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        for p in jobs:
            self.dispatched.append(RecordedDispatch(p.job, p.payload, p.data, p.dispatch_id, p))
        return [p.dispatch_id for p in jobs]

    def for_job(self, job: Job[Any, Any]) -> list[RecordedDispatch]:
        return [d for d in self.dispatched if d.job.name == job.name]

    def assert_dispatched(
        self, job: Job[Any, Any], payload: BaseModel | Mapping[str, Any] | None = None
    ) -> RecordedDispatch:
        """Assert `job` was dispatched (with `payload`, compared as validated models)."""
        matches = self.for_job(job)
        if not matches:
            sent = [d.job_name for d in self.dispatched] or "nothing"
            raise AssertionError(f"job {job.name!r} was not dispatched (dispatched: {sent})")
        if payload is None:
            return matches[-1]
        from .jobs.payload import validate_payload

        expected = validate_payload(job, payload)
        for d in matches:
            if d.payload == expected:
                return d
        seen = [d.data for d in matches]
        raise AssertionError(
            f"job {job.name!r} was dispatched, but not with {expected.model_dump(mode='json')}; "
            f"payloads seen: {seen}"
        )

    def assert_not_dispatched(self, job: Job[Any, Any]) -> None:
        matches = self.for_job(job)
        if matches:
            raise AssertionError(
                f"job {job.name!r} was dispatched {len(matches)} time(s): "
                f"{[d.data for d in matches]}"
            )

    def run_all(self, context: ContextSource, *, raise_on_failure: bool = True) -> int:
        """Run every recorded dispatch (and any they dispatch in turn) with the inline policy:
        retries and step sleeps do not wait, a job with steps runs delivery after delivery
        until it ends, its steps kept in `self.steps`.

        Returns how many ran. A job that gives up raises `JobFailedError` unless told not to.
        """
        worker: JobWorker[Any] = JobWorker(
            None,
            context=context,
            backend=self.backend_name,
            instrumentation=self.events,
            steps=StepsSetup(self.steps, wait_sleeps=False, wait_backoff=False),
        )
        worker.outbound = lambda: self  # JOB_FAILED is recorded, then run in turn
        ran = 0
        while self.dispatched:
            pending, self.dispatched = self.dispatched, []
            for d in pending:
                failure = _RecordFailure()
                worker.run_in_process(d.job, d.data, d.dispatch_id, failure, wait=False)
                ran += 1
                if failure.error is not None and raise_on_failure:
                    raise JobFailedError(d.job_name, failure.error, failure.runs)
        return ran

    def clear(self) -> None:
        self.dispatched.clear()


class _RecordFailure:
    """A settlement that remembers how a job gave up, for `run_all` to report it."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.runs = 0

    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        """The in-process loop runs the next attempt."""

    def defer(self, delivery: Delivery, delay: timedelta) -> None:
        """The in-process loop delivers a run with steps again."""

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        self.error, self.runs = error, delivery.attempt + 1


class RecordingInstrumentation:
    """Keeps every `JobEvent` in memory (thread-safe), with helpers to wait and filter."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self._changed = threading.Condition()

    def record(self, event: JobEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def kinds(self, job_name: str | None = None, dispatch_id: str | None = None) -> list[str]:
        return [e.kind for e in self.for_job(job_name, dispatch_id)]

    def for_job(
        self, job_name: str | None = None, dispatch_id: str | None = None
    ) -> list[JobEvent]:
        with self._changed:
            events = list(self.events)
        return [
            e
            for e in events
            if (job_name is None or e.job_name == job_name)
            and (dispatch_id is None or e.dispatch_id == dispatch_id)
        ]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Block until `predicate(events)` is true or `timeout` passes; returns the last result."""
        with self._changed:
            return bool(self._changed.wait_for(lambda: predicate(list(self.events)), timeout))

    def clear(self) -> None:
        with self._changed:
            self.events.clear()

    def __iter__(self) -> Iterator[JobEvent]:
        return iter(list(self.events))


if pytest is not None:

    def pytest_addoption(parser: pytest.Parser) -> None:
        parser.addini(
            "jobs_inline_raise_on_failure",
            type="bool",
            default=True,
            help="jobs_core: whether the inline_dispatcher fixture raises JobFailedError from "
            "dispatch when a job gives up (false: as the durable backends, never)",
        )

    @pytest.fixture
    def recording_dispatcher() -> RecordingDispatcher:
        """A `RecordingDispatcher`: use cases dispatch into it; assert with `assert_dispatched`."""
        return RecordingDispatcher()

    @pytest.fixture
    def inline_dispatcher(request: pytest.FixtureRequest) -> Any:
        """An `InlineDispatcher` with no context and a `RecordingInstrumentation`.

        Set `.context` (or build your own `InlineDispatcher(context=...)`) before dispatching.
        A job that gives up raises `JobFailedError` from `dispatch`, unless the ini option
        `jobs_inline_raise_on_failure = false` (or `.raise_on_failure = False`) says otherwise.
        """
        from .backend import load_backend

        inline: Any = load_backend("inline")
        return inline.InlineDispatcher(
            context=None,
            instrumentation=RecordingInstrumentation(),
            raise_on_failure=bool(request.config.getini("jobs_inline_raise_on_failure")),
        )
