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

from ._compat import is_async_callable
from .errors import JobPayloadError, PermanentError, RetryLater
from .instrumentation import (
    Instrumentation,
    JobEvent,
    describe_error,
    safe_record,
    with_logging,
)
from .job import Job
from .payload import parse_payload

logger = logging.getLogger("jobs_core.execution")

OutcomeStatus = Literal["completed", "retry", "failed"]

ContextSource = Any
"""A context object, or a sync or async factory (any callable) called once per run."""


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How one run ended, and what the backend must do next.

    `retry_in` is set when `status == "retry"`: the backend schedules the next run no earlier.
    `error` is what the handler (or the payload parser) raised, if anything.
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


async def _run(
    job: Job[Any, Any],
    raw_payload: Any,
    context: ContextSource,
    attempt: int,
    dispatch_id: str | None,
    backend: str,
    instrumentation: Instrumentation,
    max_retry_wait: timedelta | None = None,
) -> JobOutcome:
    def event(kind: Any, **extra: Any) -> None:
        safe_record(
            instrumentation,
            JobEvent(kind, "execute", job.name, dispatch_id, attempt, backend, **extra),
        )

    event("started")
    started = time.perf_counter()
    payload: Any = raw_payload
    ctx: Any = None
    have_ctx = False
    try:
        payload = parse_payload(job, raw_payload)
        ctx = await _build_context(context)
        have_ctx = True
        await _resolve(job.handler(payload, ctx))
    except Exception as error:
        outcome = classify(job, error, attempt, max_retry_wait)
    else:
        event("completed", duration=timedelta(seconds=time.perf_counter() - started))
        return JobOutcome("completed", attempt)

    duration = timedelta(seconds=time.perf_counter() - started)
    assert outcome.error is not None
    if outcome.should_retry:
        event(
            "retrying",
            error=describe_error(outcome.error),
            duration=duration,
            retry_in=outcome.retry_in,
        )
        return outcome

    await _call_on_failure(job, outcome.error, payload, context, ctx, have_ctx, dispatch_id)
    event("failed", error=describe_error(outcome.error), duration=duration)
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


async def run_job(
    job: Job[Any, Any],
    raw_payload: Any,
    *,
    context: ContextSource,
    attempt: int,
    dispatch_id: str | None,
    backend: str,
    instrumentation: Instrumentation | None = None,
    max_retry_wait: timedelta | None = None,
) -> JobOutcome:
    """Run one delivery of `job` inside a running event loop; see the module docstring."""
    return await _run(
        job,
        raw_payload,
        context,
        attempt,
        dispatch_id,
        backend,
        with_logging(instrumentation),
        max_retry_wait,
    )


async def settle_lost_run(
    job: Job[Any, Any],
    raw_payload: Any,
    error: BaseException,
    *,
    context: ContextSource,
    attempt: int,
    dispatch_id: str | None,
    backend: str,
    instrumentation: Instrumentation | None = None,
) -> None:
    """A run the backend gave up on without the worker's answer (see `WorkerLostError`): run
    `on_failure` once with `error` and record `failed`, as a give-up of the core's own would."""
    try:
        payload: Any = parse_payload(job, raw_payload)
    except JobPayloadError:
        payload = raw_payload
    await _call_on_failure(job, error, payload, context, None, False, dispatch_id)
    event = JobEvent(
        "failed", "execute", job.name, dispatch_id, attempt, backend, error=describe_error(error)
    )
    safe_record(with_logging(instrumentation), event)


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


def _drive_without_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    # Every part of the run is synchronous, so the coroutine finishes on its first step;
    # skipping the event loop keeps sync handlers free of a running loop (Django's ORM
    # refuses to run inside one) and costs nothing per job.
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a synchronous job suspended: a sync handler returned an awaitable?")


def run_job_sync(
    job: Job[Any, Any],
    raw_payload: Any,
    *,
    context: ContextSource,
    attempt: int,
    dispatch_id: str | None,
    backend: str,
    instrumentation: Instrumentation | None = None,
    max_retry_wait: timedelta | None = None,
) -> JobOutcome:
    """`run_job` for sync worker threads (Celery, Dramatiq): async parts run on a thread loop."""
    coro = _run(
        job,
        raw_payload,
        context,
        attempt,
        dispatch_id,
        backend,
        with_logging(instrumentation),
        max_retry_wait,
    )
    result: JobOutcome = run_to_end(coro, job, context)
    return result


def run_to_end(coro: Coroutine[Any, Any, Any], job: Job[Any, Any], context: ContextSource) -> Any:
    """Run a coroutine of `job`'s from sync code: on this thread's loop when a part of the job
    is async, else without any loop."""
    if needs_event_loop(job, context):
        return run_coroutine_blocking(coro)
    return _drive_without_loop(coro)
