"""The inline backend: runs each job in the caller's process before `dispatch` returns.

Made for tests and local work. It runs the same core path as every worker (`run_job`), with
the same number of runs for the same `Retry.attempts`, the same events and the same `on_failure`
call. Differences from the durable backends, by design:

- `delay=` / `run_at=` are ignored: the job runs at once (C8).
- Retries do not wait unless `wait_backoff=True` (C15).
- A job that gives up raises `JobFailedError` to the caller, or calls `on_error(error, job)`.
- Idempotency keys live in this process only (C9).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from jobs_core.config import JobsSettings
from jobs_core.dispatcher import BaseDispatcher, PreparedJob
from jobs_core.errors import JobFailedError
from jobs_core.execution import ContextSource, JobOutcome, run_job, run_job_sync
from jobs_core.idempotency import MemoryIdempotencyStore
from jobs_core.instrumentation import Instrumentation
from jobs_core.job import Job
from jobs_core.port import DispatchReceipt

BACKEND = "inline"

ErrorCallback = Callable[[BaseException, Job[Any, Any]], None]


class InlineDispatcher(BaseDispatcher):
    """Runs jobs immediately, in process, through the core's `run_job`."""

    backend_name = BACKEND

    def __init__(
        self,
        context: ContextSource = None,
        on_error: ErrorCallback | None = None,
        instrumentation: Instrumentation | None = None,
        wait_backoff: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(
            instrumentation=instrumentation, idempotency=MemoryIdempotencyStore(), **options
        )
        self.context = context
        self.on_error = on_error
        self.wait_backoff = wait_backoff

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        for prepared in jobs:
            self._run_sync(prepared)
        return [p.dispatch_id for p in jobs]

    def _run_sync(self, prepared: PreparedJob) -> None:
        attempt = 0
        while True:
            outcome = run_job_sync(
                prepared.job,
                prepared.data,
                context=self.context,
                attempt=attempt,
                dispatch_id=prepared.dispatch_id,
                backend=BACKEND,
                instrumentation=self.instrumentation,
            )
            if not outcome.should_retry:
                return self._finish(prepared, outcome)
            if self.wait_backoff and outcome.retry_in:
                time.sleep(outcome.retry_in.total_seconds())
            attempt += 1

    async def _run_async(self, prepared: PreparedJob) -> None:
        attempt = 0
        while True:
            outcome = await run_job(
                prepared.job,
                prepared.data,
                context=self.context,
                attempt=attempt,
                dispatch_id=prepared.dispatch_id,
                backend=BACKEND,
                instrumentation=self.instrumentation,
            )
            if not outcome.should_retry:
                return self._finish(prepared, outcome)
            if self.wait_backoff and outcome.retry_in:
                await asyncio.sleep(outcome.retry_in.total_seconds())
            attempt += 1

    def _finish(self, prepared: PreparedJob, outcome: JobOutcome) -> None:
        if outcome.completed or outcome.error is None:
            return
        if self.on_error is not None:
            self.on_error(outcome.error, prepared.job)
            return
        raise JobFailedError(prepared.name, outcome.error, outcome.attempt + 1)

    async def _dispatch_prepared_async(
        self, prepared: Sequence[PreparedJob]
    ) -> list[DispatchReceipt]:
        to_send, duplicates, _ = self._claim(prepared)
        receipts = self._receipts(prepared, [p.dispatch_id for p in to_send], duplicates)
        for job in to_send:
            await self._run_async(job)
        return receipts

    def _dispatch_prepared(self, prepared: Sequence[PreparedJob]) -> list[DispatchReceipt]:
        # Record `scheduled` before the run starts, as the durable backends do.
        to_send, duplicates, _ = self._claim(prepared)
        receipts = self._receipts(prepared, [p.dispatch_id for p in to_send], duplicates)
        self._send(to_send)
        return receipts

    def __repr__(self) -> str:
        return f"InlineDispatcher(context={self.context!r}, wait_backoff={self.wait_backoff})"


def create_dispatcher(
    settings: JobsSettings,
    *,
    context: ContextSource = None,
    instrumentation: Instrumentation | None = None,
    **options: Any,
) -> InlineDispatcher:
    """The `JOBS_BACKEND=inline` factory used by `jobs_core.create_dispatcher`."""
    return InlineDispatcher(
        context=context,
        instrumentation=instrumentation,
        max_payload_bytes=settings.max_payload_bytes,
        timeout=settings.dispatch_timeout,
        **options,
    )


__all__ = ["InlineDispatcher", "create_dispatcher"]
