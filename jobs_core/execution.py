"""The one worker-side path: `run_job` (or `run_job_sync`) runs one delivery of a job.

Adapters reach it through the worker seam (`jobs_core.worker.JobWorker`). `run_job` parses the
payload, builds the context, runs the handler once, and classifies the outcome so that every
backend retries, gives up and reports in exactly the same way:

- the handler returned: `completed`;
- `PermanentError`, or a payload that does not fit the model (`JobPayloadError`): give up now;
- `RetryLater(d)`: retry after `d`, if attempts are left;
- any other `Exception`: retry after the core's backoff (C15), if attempts are left;
- no attempts left, or a wait longer than the backend can keep (`max_retry_wait`): give up.

On giving up, the job's `on_failure` runs here, once, and `failed` is recorded. The worker seam
then carries the returned `JobOutcome` out through the adapter's library.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from typing_extensions import NotRequired, TypedDict, Unpack

from ._compat import is_async_callable
from .errors import JobPayloadError, PermanentError, RetryLater
from .instrumentation import (
    EventKind,
    Instrumentation,
    JobEvent,
    describe_error,
    interest,
    safe_record,
    with_logging,
)
from .job import Job
from .payload import parse_payload

logger = logging.getLogger("jobs_core.execution")

OutcomeStatus = Literal["completed", "retry", "failed", "deferred"]

ContextSource = Any
"""A context object, or a sync or async factory (any callable) called once per run."""


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How one run ended, and what the backend must do next.

    `retry_in` is set when `status == "retry"`: the backend schedules the next run no earlier;
    and when `status == "deferred"` (flow control: the run did not start, the same attempt runs
    then). `error` is what the handler (or the payload parser) raised, if anything.
    """

    status: OutcomeStatus
    attempt: int
    error: BaseException | None = None
    retry_in: timedelta | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def should_retry(self) -> bool:
        return self.status == "retry"

    @property
    def gave_up(self) -> bool:
        return self.status == "failed"

    @property
    def deferred(self) -> bool:
        return self.status == "deferred"


_COMPLETED = tuple(JobOutcome("completed", attempt) for attempt in range(32))
"""The outcome of a run that went well, made once per attempt number (it is immutable)."""


def _completed(attempt: int) -> JobOutcome:
    if 0 <= attempt < len(_COMPLETED):
        return _COMPLETED[attempt]
    return JobOutcome("completed", attempt)


class ExecuteEvents:
    """Where the execute events of runs go: each built only when the instrumentation (the
    default logging added) wants its kind, so a run nobody watches pays for no event."""

    __slots__ = ("backend", "instrumentation", "wants")

    def __init__(self, instrumentation: Instrumentation | None, backend: str) -> None:
        self.instrumentation = with_logging(instrumentation)
        self.wants = interest(self.instrumentation)
        self.backend = backend

    def record(
        self,
        kind: EventKind,
        job_name: str,
        dispatch_id: str | None,
        attempt: int,
        started: float | None = None,
        error: BaseException | None = None,
        retry_in: timedelta | None = None,
        ended: float | None = None,
    ) -> None:
        """Record `kind`; `started` and `ended` (`perf_counter`s, `ended` default now) give
        the event its duration."""
        if not self.wants(kind):
            return
        duration = None
        if started is not None:
            duration = timedelta(seconds=(ended or time.perf_counter()) - started)
        described = None if error is None else describe_error(error)
        event = JobEvent(
            kind,
            "execute",
            job_name,
            dispatch_id,
            attempt,
            self.backend,
            error=described,
            duration=duration,
            retry_in=retry_in,
        )
        safe_record(self.instrumentation, event)


def context_is_async(context: ContextSource) -> bool:
    return callable(context) and is_async_callable(context)


def needs_event_loop(job: Job[Any, Any], context: ContextSource) -> bool:
    """True when some part of a run (handler, context factory, failure hook) is async."""
    return (
        job.handler_is_async
        or context_is_async(context)
        or (job.on_failure is not None and is_async_callable(job.on_failure))
    )


async def _resolve(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def _build_context(context: ContextSource) -> Any:
    if callable(context):
        return await _resolve(context())
    return context


def classify(
    job: Job[Any, Any],
    error: BaseException,
    attempt: int,
    max_retry_wait: timedelta | None = None,
) -> JobOutcome:
    """Decide retry or give up for `error` raised on `attempt` (0-based); a wait longer than
    `max_retry_wait` (what the backend can keep between attempts) gives up, saying why."""
    if isinstance(error, (PermanentError, JobPayloadError)):
        return JobOutcome("failed", attempt, error)
    if attempt >= job.retry.attempts:
        return JobOutcome("failed", attempt, error)
    wait = error.delay if isinstance(error, RetryLater) else job.retry.backoff(attempt + 1)
    if max_retry_wait is not None and wait > max_retry_wait:
        refused = PermanentError(
            f"a retry after {wait} is longer than this backend waits between attempts "
            f"({max_retry_wait}); dispatch a new job with delay= instead"
        )
        refused.__cause__ = error
        return JobOutcome("failed", attempt, refused)
    return JobOutcome("retry", attempt, error, wait)


async def execute(
    job: Job[Any, Any],
    raw_payload: Any,
    context: ContextSource,
    attempt: int,
    dispatch_id: str | None,
    events: ExecuteEvents,
    max_retry_wait: timedelta | None = None,
) -> JobOutcome:
    """One run of `job` as a coroutine, its events going to `events`: the body of `run_job`
    for a worker that keeps its `ExecuteEvents` from run to run."""
    events.record("started", job.name, dispatch_id, attempt)
    started = time.perf_counter()
    payload: Any = raw_payload
    ctx: Any = None
    have_ctx = False
    try:
        payload = parse_payload(job, raw_payload)
        if callable(context):
            ctx = context()
            if inspect.isawaitable(ctx):
                ctx = await ctx
        else:
            ctx = context
        have_ctx = True
        result = job.handler(payload, ctx)
        if result is not None and inspect.isawaitable(result):
            await result
    except Exception as error:
        outcome = classify(job, error, attempt, max_retry_wait)
    else:
        events.record("completed", job.name, dispatch_id, attempt, started)
        return _completed(attempt)

    assert outcome.error is not None
    if outcome.should_retry:
        events.record(
            "retrying", job.name, dispatch_id, attempt, started, outcome.error, outcome.retry_in
        )
        return outcome

    ended = time.perf_counter()
    await _call_on_failure(job, outcome.error, payload, context, ctx, have_ctx, dispatch_id)
    events.record("failed", job.name, dispatch_id, attempt, started, outcome.error, ended=ended)
    return outcome


async def _call_on_failure(
    job: Job[Any, Any],
    error: BaseException,
    payload: Any,
    context: ContextSource,
    ctx: Any,
    have_ctx: bool,
    dispatch_id: str | None,
) -> None:
    if job.on_failure is None:
        return
    if not have_ctx:
        try:
            ctx = await _build_context(context)
        except Exception:
            logger.exception("job %r: context factory failed before on_failure", job.name)
    try:
        await _resolve(job.on_failure(error, payload, ctx))
    except Exception:
        logger.exception("job %r: on_failure raised (dispatch_id=%s)", job.name, dispatch_id)


class RunOptions(TypedDict):
    """One delivery's circumstances, for `run_job`."""

    context: ContextSource
    """The handler's context, or a sync or async factory of it called once per run."""
    attempt: int
    """Which run this is, counting from 0 (C11)."""
    dispatch_id: str | None
    """The backend's id of the dispatch, for events and logs."""
    backend: str
    """The backend's name, for events."""
    instrumentation: NotRequired[Instrumentation | None]
    """Where events go, besides the default logging."""
    max_retry_wait: NotRequired[timedelta | None]
    """The longest wait before a retry the backend can keep: a longer one gives up."""


def _execution(
    job: Job[Any, Any], raw_payload: Any, run: RunOptions
) -> Coroutine[Any, Any, JobOutcome]:
    events = ExecuteEvents(run.get("instrumentation"), run["backend"])
    return execute(
        job,
        raw_payload,
        run["context"],
        run["attempt"],
        run["dispatch_id"],
        events,
        run.get("max_retry_wait"),
    )


async def run_job(job: Job[Any, Any], raw_payload: Any, **run: Unpack[RunOptions]) -> JobOutcome:
    """Run one delivery of `job` inside a running event loop; see the module docstring."""
    return await _execution(job, raw_payload, run)


async def settle_lost_run(
    job: Job[Any, Any], raw_payload: Any, error: BaseException, **run: Unpack[RunOptions]
) -> None:
    """A run the backend gave up on without the worker's answer (see `WorkerLostError`): run
    `on_failure` once with `error` and record `failed`, as a give-up of the core's own would."""
    try:
        payload: Any = parse_payload(job, raw_payload)
    except JobPayloadError:
        payload = raw_payload
    dispatch_id = run["dispatch_id"]
    await _call_on_failure(job, error, payload, run["context"], None, False, dispatch_id)
    event = JobEvent(
        "failed",
        "execute",
        job.name,
        dispatch_id,
        run["attempt"],
        run["backend"],
        error=describe_error(error),
    )
    safe_record(with_logging(run.get("instrumentation")), event)


_thread_loops = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_thread_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_loops.loop = loop
    return loop


def run_coroutine_blocking(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` to the end from sync code, on this thread's own long-lived event loop.

    Reusing one loop per worker thread (instead of `asyncio.run` per job) keeps loop-bound
    resources such as connection pools usable from one job to the next.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError(
            "run_job_sync was called inside a running event loop; use `await run_job(...)`"
        )
    return _thread_loop().run_until_complete(coro)


def drive_without_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` of a job whose every part is synchronous: it finishes on its first step.
    Skipping the event loop keeps sync handlers free of a running loop (Django's ORM refuses
    to run inside one) and costs nothing per job."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a synchronous job suspended: a sync handler returned an awaitable?")


def run_job_sync(job: Job[Any, Any], raw_payload: Any, **run: Unpack[RunOptions]) -> JobOutcome:
    """`run_job` for sync worker threads (Celery, Dramatiq): async parts run on a thread loop."""
    result: JobOutcome = run_to_end(_execution(job, raw_payload, run), job, run["context"])
    return result


def run_to_end(coro: Coroutine[Any, Any, Any], job: Job[Any, Any], context: ContextSource) -> Any:
    """Run a coroutine of `job`'s from sync code: on this thread's loop when a part of the job
    is async, else without any loop."""
    if needs_event_loop(job, context):
        return run_coroutine_blocking(coro)
    return drive_without_loop(coro)
