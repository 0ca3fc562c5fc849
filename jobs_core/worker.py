"""The worker seam: every backend's worker hands the core a `Delivery` and a `Settlement`.

The core runs the delivery once (`run_job`), decides how it ended (completed, retry after a
delay, give up) and carries the decision out through the adapter's `Settlement`, which knows
how its library retries after a delay and gives up. Unknown job names and messages that cannot
be read are reported here, the same way on every backend; the adapter then keeps the message
where an operator finds it (a dead-letter queue, a failed run).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, Protocol, TypeVar

from .errors import JobConfigError, UnknownJobError
from .execution import (
    ContextSource,
    JobOutcome,
    needs_event_loop,
    run_job,
    run_job_sync,
    run_to_end,
    settle_lost_run,
)
from .instrumentation import Instrumentation, JobEvent, safe_record, with_logging
from .job import Job
from .registry import JobRegistry

logger = logging.getLogger("jobs_core.worker")

C = TypeVar("C")

UNKNOWN_JOB = "<unknown>"
"""The job name reported for a message so malformed that it names no job."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as a backend delivered it: what the core needs to run it once.

    `data` is the payload as it travelled (a dict, JSON text or bytes); `attempt` counts from 0;
    `dispatch_id` is the id the producer's receipt carries (C9).
    """

    job_name: str
    data: Any
    attempt: int = 0
    dispatch_id: str | None = None


def delivery_from_call(
    job_name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    attempt: int,
    dispatch_id: str | None,
) -> Delivery:
    """A task or actor call as a delivery: its one positional argument is the payload.

    Anything else was not sent by a dispatcher (a message made by hand); it is handed on as it
    is, and the core treats it as bad input (C16) instead of letting the library retry it.
    """
    data = args[0] if len(args) == 1 and not kwargs else [*args, dict(kwargs)]
    return Delivery(job_name, data, attempt, dispatch_id)


class Settlement(Protocol):
    """How a backend's library carries out the core's decision about one delivery."""

    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        """Run `delivery` again, as attempt + 1, no earlier than `delay` from now (usually by
        raising the library's own retry signal)."""
        ...

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        """Run `delivery` no more. The core has already run `on_failure` and recorded `failed`;
        the library only has to stop (and keep the message where it keeps failures)."""
        ...


class JobWorker(Generic[C]):
    """Runs the deliveries of one registry's jobs and settles their outcomes (the worker seam).

    `context` is a ctx object, or a sync or async factory called once per run;
    `instrumentation` is added to the default logging; `max_retry_wait` is the longest wait the
    backend keeps between attempts (a longer one gives up, saying so).
    """

    def __init__(
        self,
        registry: JobRegistry[C] | None,
        *,
        context: ContextSource,
        backend: str,
        instrumentation: Instrumentation | None = None,
        max_retry_wait: timedelta | None = None,
    ) -> None:
        self.registry = registry
        self.context = context
        self.backend = backend
        self.instrumentation = with_logging(instrumentation)
        self.max_retry_wait = max_retry_wait

    def check(self, job: Job[Any, Any]) -> None:
        """Refuse (C28) a job whose retry policy waits longer than `max_retry_wait`."""
        waits = [job.retry.base_backoff(k) for k in range(1, job.retry.attempts + 1)]
        if self.max_retry_wait is not None and waits and max(waits) > self.max_retry_wait:
            raise JobConfigError(
                f"job {job.name!r}: option 'retry' waits up to {max(waits)} between attempts; "
                f"the {self.backend} backend waits at most {self.max_retry_wait}: lower "
                "max_backoff"
            )

    def needs_event_loop(self, job: Job[Any, Any]) -> bool:
        """True when a run of `job` has an async part (handler, context factory, hook)."""
        return needs_event_loop(job, self.context)

    def run(
        self, delivery: Delivery, settlement: Settlement, job: Job[Any, Any] | None = None
    ) -> JobOutcome:
        """Run `delivery` once from sync code and settle its outcome; async parts run on this
        thread's event loop. `job` is looked up by the delivery's name unless given."""
        job = job or self._job(delivery, settlement)
        if job is None:
            return _UNKNOWN_OUTCOME
        outcome = run_job_sync(
            job,
            delivery.data,
            context=self.context,
            attempt=delivery.attempt,
            dispatch_id=delivery.dispatch_id,
            backend=self.backend,
            instrumentation=self.instrumentation,
            max_retry_wait=self.max_retry_wait,
        )
        return settle(delivery, outcome, settlement)

    async def run_async(
        self, delivery: Delivery, settlement: Settlement, job: Job[Any, Any] | None = None
    ) -> JobOutcome:
        """`run` inside a running event loop."""
        job = job or self._job(delivery, settlement)
        if job is None:
            return _UNKNOWN_OUTCOME
        outcome = await run_job(
            job,
            delivery.data,
            context=self.context,
            attempt=delivery.attempt,
            dispatch_id=delivery.dispatch_id,
            backend=self.backend,
            instrumentation=self.instrumentation,
            max_retry_wait=self.max_retry_wait,
        )
        return settle(delivery, outcome, settlement)

    async def settle_lost_async(
        self, job: Job[Any, Any], delivery: Delivery, error: BaseException
    ) -> None:
        """The backend failed `delivery`'s run without the worker's answer (the worker died in
        the last attempt, the call timed out): run `on_failure` once and record `failed`."""
        await settle_lost_run(
            job,
            delivery.data,
            error,
            context=self.context,
            attempt=delivery.attempt,
            dispatch_id=delivery.dispatch_id,
            backend=self.backend,
            instrumentation=self.instrumentation,
        )

    def settle_lost(self, job: Job[Any, Any], delivery: Delivery, error: BaseException) -> None:
        """`settle_lost_async` from sync code."""
        run_to_end(self.settle_lost_async(job, delivery, error), job, self.context)

    def run_in_process(
        self, job: Job[Any, Any], data: Any, dispatch_id: str, settlement: Settlement, wait: bool
    ) -> JobOutcome:
        """Run `job` attempt after attempt in this thread until it completes or gives up (the
        inline policy); with `wait`, sleep each retry's delay first."""
        for attempt in itertools.count():
            outcome = self.run(Delivery(job.name, data, attempt, dispatch_id), settlement, job)
            if not outcome.should_retry:
                return outcome
            if wait and outcome.retry_in:
                time.sleep(outcome.retry_in.total_seconds())
        raise AssertionError("unreachable")

    async def run_in_process_async(
        self, job: Job[Any, Any], data: Any, dispatch_id: str, settlement: Settlement, wait: bool
    ) -> JobOutcome:
        """`run_in_process` on the caller's event loop."""
        for attempt in itertools.count():
            delivery = Delivery(job.name, data, attempt, dispatch_id)
            outcome = await self.run_async(delivery, settlement, job)
            if not outcome.should_retry:
                return outcome
            if wait and outcome.retry_in:
                await asyncio.sleep(outcome.retry_in.total_seconds())
        raise AssertionError("unreachable")

    def _job(self, delivery: Delivery, settlement: Settlement) -> Job[Any, Any] | None:
        job = self.registry.get(delivery.job_name) if self.registry is not None else None
        if job is None:
            error = self.report_unknown(delivery)
            settlement.give_up(delivery, error)
        return job

    def report_unknown(self, delivery: Delivery, where: str = "") -> UnknownJobError:
        """Log a delivery for a job this worker does not know and record it as `failed` (C17);
        the adapter keeps the message (`where` says where)."""
        error = UnknownJobError(f"no job named {delivery.job_name!r} in this worker's registry")
        hint = f"; kept in {where}" if where else ""
        logger.error(
            "unknown job %r (dispatch_id=%s, backend=%s): not run%s",
            delivery.job_name,
            delivery.dispatch_id,
            self.backend,
            hint,
        )
        self._record_failed(delivery, f"UnknownJob: {error}")
        return error

    def report_malformed(
        self,
        *,
        message_id: str | None,
        job_name: str | None,
        size: int,
        where: str,
        error: BaseException | str,
    ) -> None:
        """Log a message that cannot be read as a job (not JSON, not the library's message
        shape) with what identifies it, and record it as `failed`; the adapter keeps it in
        `where`. Its content is never logged: it may hold personal data or secrets (C23)."""
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        logger.error(
            "malformed message %s (job=%r, %d bytes, backend=%s): not run; kept in %s: %s",
            message_id,
            job_name,
            size,
            self.backend,
            where,
            reason[:300],
        )
        delivery = Delivery(job_name or UNKNOWN_JOB, None, 0, message_id)
        self._record_failed(delivery, f"MalformedMessage: {reason[:300]}")

    def _record_failed(self, delivery: Delivery, error: str) -> None:
        safe_record(
            self.instrumentation,
            JobEvent(
                "failed",
                "execute",
                delivery.job_name,
                delivery.dispatch_id,
                delivery.attempt,
                self.backend,
                error=error,
            ),
        )


_UNKNOWN_OUTCOME = JobOutcome("failed", 0)


def settle(delivery: Delivery, outcome: JobOutcome, settlement: Settlement) -> JobOutcome:
    """Carry out `outcome` through `settlement` (the one place the outcome is switched on)."""
    if outcome.should_retry:
        settlement.retry(delivery, outcome.retry_in or timedelta(0))
    elif outcome.gave_up:
        assert outcome.error is not None
        settlement.give_up(delivery, outcome.error)
    return outcome
