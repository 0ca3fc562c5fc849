"""The inline backend: runs each job in the caller's process before `dispatch` returns.

Made for tests and local work: the same worker path as every backend, the same number of runs
for the same `Retry.attempts`, the same events and `on_failure` call. By design, `delay`/`run_at`
run at once (C8), retries do not wait unless `wait_backoff=True` (C15), and idempotency keys
and flow-control limits live in this dispatcher (C9, C25-C27: a dispatch waits for its turn).
A job that gives up raises `JobFailedError` from `dispatch` (so a test fails where it dispatched),
or calls `on_error(error, job)`, or neither with `raise_on_failure=False`; in `dispatch_many`
every job runs first, and the first give-up is raised after the last one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from jobs_core.config import JobsSettings
from jobs_core.dispatch.dispatcher import BaseDispatcher, ErrorCallback
from jobs_core.dispatch.idempotency import MemoryIdempotencyStore
from jobs_core.dispatch.port import DispatchReceipt
from jobs_core.dispatch.prepared import PreparedJob
from jobs_core.errors import JobConfigError, JobFailedError
from jobs_core.flow.limiter import LocalFlowLimiter
from jobs_core.instrumentation import Instrumentation
from jobs_core.jobs.job import Job
from jobs_core.jobs.registry import JobRegistry
from jobs_core.steps.resume import Sweeper, resume
from jobs_core.steps.store import MemoryStepStore
from jobs_core.worker import ContextSource, Delivery, JobWorker, Outcome, StepsSetup


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
        wait_sleeps: bool = False,
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
        self.wait_sleeps = wait_sleeps
        self.flow = LocalFlowLimiter()
        self.steps = MemoryStepStore()
        self._sweeper: Sweeper | None = None
        self._jobs_seen: dict[str, Job[Any, Any]] = {}

    @property
    def steps(self) -> MemoryStepStore:
        """Where the steps of this dispatcher's runs are kept, and the runs that wait."""
        return self._steps

    @steps.setter
    def steps(self, store: MemoryStepStore) -> None:
        self._steps = store
        self.waits = getattr(store, "waits", None)

    def _sweep(self) -> None:
        """End waits at their deadline: a waiting run is parked, and resumed with None then,
        in a thread of its own (C42: on inline too a wait really waits)."""
        if self._sweeper is None and self.waits is not None:
            waits = self.waits

            def deliver(due: list[Any]) -> None:
                resume(self, waits, due, lambda name: self._jobs_seen.get(name))

            self._sweeper = Sweeper(waits, deliver, every=0.05).start()

    def _worker(self) -> JobWorker[Any]:
        steps = StepsSetup(self.steps, self.wait_sleeps, self.wait_backoff)
        worker: JobWorker[Any] = JobWorker(
            None,
            context=self.context,
            backend="inline",
            instrumentation=self.events,
            flow=self.flow,
            steps=steps,
        )
        worker.outbound = lambda: self  # JOB_FAILED runs its jobs here, as every dispatch
        return worker

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        self._run_all(self._worker(), jobs)
        return [p.dispatch_id for p in jobs]

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
        super().close()

    def _run_all(self, worker: JobWorker[Any], jobs: Sequence[PreparedJob]) -> None:
        """Run every job of the batch to its outcome, then raise the first give-up (if any
        is to be raised): a job that gives up is its own outcome, it does not cancel the jobs
        dispatched with it, whose keys are already claimed (as on a durable backend, where
        each job of a batch runs however the others end)."""
        gave_up: list[JobFailedError] = []
        for p in jobs:
            settle = _Settlement(self, p.job, gave_up)
            outcome = worker.run_in_process(
                p.job, p.data, p.dispatch_id, settle, self.wait_backoff, p.headers
            )
            self._parked(p, outcome)
        if gave_up:
            raise gave_up[0]

    def _parked(self, p: PreparedJob, outcome: Outcome) -> None:
        """A run that waits for an event or a child: its job is kept, to deliver it again."""
        if outcome.parked:
            self._jobs_seen[p.job.name] = p.job
            self._sweep()

    def _submit(self, prepared: Sequence[PreparedJob]) -> list[DispatchReceipt]:
        worker = self._worker()
        _refuse_async_jobs_inside_a_loop(worker, prepared)  # before any key is claimed
        # `scheduled` is recorded before the run starts, as on the durable backends.
        to_send, duplicates, _ = self._claim(prepared)
        receipts = self._receipts(prepared, [p.dispatch_id for p in to_send], duplicates)
        self._run_all(worker, to_send)
        return receipts

    async def _submit_async(self, prepared: Sequence[PreparedJob]) -> list[DispatchReceipt]:
        to_send, duplicates, _ = self._claim(prepared)
        receipts = self._receipts(prepared, [p.dispatch_id for p in to_send], duplicates)
        worker = self._worker()
        gave_up: list[JobFailedError] = []
        for p in to_send:  # async parts run on the caller's event loop, not in a thread
            settle = _Settlement(self, p.job, gave_up)
            outcome = await worker.run_in_process_async(
                p.job, p.data, p.dispatch_id, settle, self.wait_backoff, p.headers
            )
            self._parked(p, outcome)
        if gave_up:
            raise gave_up[0]
        return receipts


def _refuse_async_jobs_inside_a_loop(
    worker: JobWorker[Any], prepared: Sequence[PreparedJob]
) -> None:
    """`dispatch_sync` of a job with async parts, called from a running event loop (inside an
    `async def`), cannot run the job to its end without blocking that loop: refused, naming
    the call to use, before anything is claimed or run."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    for p in prepared:
        if worker.needs_event_loop(p.job):
            raise RuntimeError(
                f"job {p.name!r} has async parts (its handler, context factory or on_failure) "
                "and cannot run inside dispatch_sync while an event loop runs in this thread "
                "(inside an `async def`): use await ctx.jobs.dispatch(...) there"
            )


class _Settlement:
    """Inline retries are the dispatcher's own loop; giving up reaches the caller."""

    def __init__(
        self, dispatcher: InlineDispatcher, job: Job[Any, Any], gave_up: list[JobFailedError]
    ) -> None:
        self.dispatcher = dispatcher
        self.job = job
        self.gave_up = gave_up

    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        """Nothing to schedule: the dispatcher runs the next attempt itself."""

    def defer(self, delivery: Delivery, delay: timedelta) -> None:
        """Nothing to schedule: the dispatcher delivers the run again itself (steps)."""

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        if self.dispatcher.on_error is not None:
            self.dispatcher.on_error(error, self.job)
        elif self.dispatcher.raise_on_failure:  # raised once the whole batch has run
            self.gave_up.append(JobFailedError(delivery.job_name, error, delivery.attempt + 1))


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
