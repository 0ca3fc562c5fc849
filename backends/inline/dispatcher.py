"""The inline backend: runs each job in the caller's process before `dispatch` returns.

Made for tests and local work: the same worker path as every backend, the same number of runs
for the same `Retry.attempts`, the same events and `on_failure` call. By design, `delay`/`run_at`
run at once (C8), retries do not wait unless `wait_backoff=True` (C15), and idempotency keys
and flow-control limits live in this dispatcher (C9, C25-C27: a dispatch waits for its turn).
A job that gives up raises `JobFailedError` from `dispatch` (so a test fails where it dispatched),
or calls `on_error(error, job)`, or neither with `raise_on_failure=False`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from jobs_core.config import JobsSettings
from jobs_core.dispatch.dispatcher import BaseDispatcher, ErrorCallback, PreparedJob
from jobs_core.dispatch.idempotency import MemoryIdempotencyStore
from jobs_core.dispatch.port import DispatchReceipt
from jobs_core.errors import JobConfigError, JobFailedError
from jobs_core.flow.limiter import LocalFlowLimiter
from jobs_core.instrumentation import Instrumentation
from jobs_core.jobs.job import Job
from jobs_core.jobs.registry import JobRegistry
from jobs_core.worker import ContextSource, Delivery, JobWorker


class InlineDispatcher(BaseDispatcher):
    """Runs jobs immediately, in process, through the core's worker path."""

    backend_name = "inline"
    runs_jobs_in_dispatch = True

    def __init__(
        self,
        context: ContextSource = None,
        on_error: ErrorCallback | None = None,
        instrumentation: Instrumentation | None = None,
        wait_backoff: bool = False,
        raise_on_failure: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(
            instrumentation=instrumentation,
            idempotency=MemoryIdempotencyStore(),
            on_error=on_error,
            raise_on_failure=raise_on_failure,
            **options,
        )
        self.context = context
        self.wait_backoff = wait_backoff
        self.flow = LocalFlowLimiter()

    def _worker(self) -> JobWorker[Any]:
        events = self.events
        return JobWorker(
            None, context=self.context, backend="inline", instrumentation=events, flow=self.flow
        )

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        worker = self._worker()
        for p in jobs:
            settle = _Settlement(self, p.job)
            worker.run_in_process(p.job, p.data, p.dispatch_id, settle, self.wait_backoff)
        return [p.dispatch_id for p in jobs]

    def _submit(self, prepared: Sequence[PreparedJob]) -> list[DispatchReceipt]:
        # `scheduled` is recorded before the run starts, as on the durable backends.
        to_send, duplicates, _ = self._claim(prepared)
        receipts = self._receipts(prepared, [p.dispatch_id for p in to_send], duplicates)
        self._send(to_send)
        return receipts

    async def _submit_async(self, prepared: Sequence[PreparedJob]) -> list[DispatchReceipt]:
        to_send, duplicates, _ = self._claim(prepared)
        receipts = self._receipts(prepared, [p.dispatch_id for p in to_send], duplicates)
        worker = self._worker()
        for p in to_send:  # async parts run on the caller's event loop, not in a thread
            settle = _Settlement(self, p.job)
            await worker.run_in_process_async(
                p.job, p.data, p.dispatch_id, settle, self.wait_backoff
            )
        return receipts


class _Settlement:
    """Inline retries are the dispatcher's own loop; giving up reaches the caller."""

    def __init__(self, dispatcher: InlineDispatcher, job: Job[Any, Any]) -> None:
        self.dispatcher = dispatcher
        self.job = job

    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        """Nothing to schedule: the dispatcher runs the next attempt itself."""

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        if self.dispatcher.on_error is not None:
            self.dispatcher.on_error(error, self.job)
        elif self.dispatcher.raise_on_failure:
            raise JobFailedError(delivery.job_name, error, delivery.attempt + 1)


def create_dispatcher(
    settings: JobsSettings,
    *,
    context: ContextSource = None,
    instrumentation: Instrumentation | None = None,
    **options: Any,
) -> InlineDispatcher:
    """The `JOBS_BACKEND=inline` factory used by `jobs_core.create_dispatcher`."""
    options = settings.dispatcher_options(instrumentation=instrumentation, **options)
    return InlineDispatcher(context=context, **options)


def run_worker(
    registry: JobRegistry[Any],
    *,
    context: ContextSource,
    settings: JobsSettings,
    argv: list[str],
) -> int:
    """The inline backend has no worker: its jobs run inside `dispatch`."""
    raise JobConfigError(
        "JOBS_BACKEND is 'inline': jobs run inside dispatch, there is no worker to start. "
        "Set JOBS_BACKEND to celery, dramatiq or inngest."
    )
