"""The worker seam: every backend's worker hands the core a `Delivery` and a `Settlement`.

The core runs the delivery once (`run_job`), decides how it ended (completed, retry after a
delay, give up) and carries the decision out through the adapter's `Settlement`, which knows
how its library retries after a delay and gives up. A job with flow control (C25, C26) first
passes the worker's `FlowLimiter`: a run that must wait longer than `WAIT_IN_WORKER` has not
started, and the adapter's `Deferral` puts it back as the same attempt. Unknown job names and
messages that cannot be read are reported here, the same way on every backend; the adapter then
keeps the message where an operator finds it (a dead-letter queue, a failed run).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from .errors import JobConfigError, JobsError, UnknownJobError
from .execution import (
    ContextSource,
    ExecuteEvents,
    JobOutcome,
    drive_without_loop,
    execute,
    needs_event_loop,
    run_coroutine_blocking,
    run_to_end,
    settle_lost_run,
)
from .flow import Resource
from .flow_limit import (
    MAX_DEFER,
    STORE_ERROR_WAIT,
    WAIT_IN_WORKER,
    Admission,
    FlowLimiter,
)
from .instrumentation import Instrumentation, JobEvent, describe_error, safe_record
from .job import Job
from .registry import JobRegistry

logger = logging.getLogger("jobs_core.worker")

C = TypeVar("C")

UNKNOWN_JOB = "<unknown>"
"""The job name reported for a message so malformed that it names no job."""

BROKER_AWAY_SECONDS = 300.0
"""How long a worker keeps trying to send a message its job needs (a retry, a deferral, a
delayed job that is due) while the broker cannot be reached: the same on every backend."""


@dataclass(slots=True)
class Delivery:
    """One message as a backend delivered it: what the core needs to run it once.

    `data` is the payload as it travelled (a dict, JSON text or bytes); `attempt` counts from 0;
    `dispatch_id` is the id the producer's receipt carries (C9). Treat it as immutable (it is
    not frozen only because a frozen dataclass takes three times as long to make, per job).
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


@runtime_checkable
class Deferral(Protocol):
    """How a backend's library puts back a run that waits for its flow-control turn."""

    def defer(self, delivery: Delivery, delay: timedelta) -> None:
        """Deliver `delivery` again, as the same attempt, no earlier than `delay` from now: the
        run did not start, so it uses no attempt, runs no hook and records no event."""
        ...


class JobWorker(Generic[C]):
    """Runs the deliveries of one registry's jobs and settles their outcomes (the worker seam).

    `context` is a ctx object, or a sync or async factory called once per run;
    `instrumentation` is added to the default logging. `flow` admits the runs of jobs with
    concurrency or throttle options (None: the backend enforces them itself, or none is set).
    `max_retry_wait` is the longest wait the backend keeps between attempts (a longer one gives
    up, saying so).
    """

    def __init__(
        self,
        registry: JobRegistry[C] | None,
        *,
        context: ContextSource,
        backend: str,
        instrumentation: Instrumentation | None = None,
        flow: FlowLimiter | None = None,
        max_retry_wait: timedelta | None = None,
    ) -> None:
        self.registry = registry
        self._needs_loop: dict[Job[Any, Any], bool] = {}
        self.context = context
        self.backend = backend
        self.instrumentation = instrumentation
        self.flow = flow
        self.max_retry_wait = max_retry_wait

    @property
    def context(self) -> ContextSource:
        """What each run's `ctx` is made from; a new one is asked again whether it is async."""
        return self._context

    @context.setter
    def context(self, value: ContextSource) -> None:
        self._context = value
        self._needs_loop.clear()

    @property
    def instrumentation(self) -> Instrumentation:
        """Where this worker's events go: the given instrumentation and the default logging."""
        return self._events.instrumentation

    @instrumentation.setter
    def instrumentation(self, value: Instrumentation | None) -> None:
        self._events = ExecuteEvents(value, self.backend)

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
        needs = self._needs_loop.get(job)
        if needs is None:
            needs = self._needs_loop[job] = needs_event_loop(job, self.context)
        return needs

    def run(
        self,
        delivery: Delivery,
        settlement: Settlement,
        job: Job[Any, Any] | None = None,
        *,
        wait_up_to: float = WAIT_IN_WORKER,
    ) -> JobOutcome:
        """Run `delivery` once from sync code and settle its outcome; async parts run on this
        thread's event loop. `job` is looked up by the delivery's name unless given. A run that
        must wait for its flow-control turn longer than `wait_up_to` seconds is deferred."""
        job = job or self._job(delivery, settlement)
        if job is None:
            return _UNKNOWN_OUTCOME
        if self.flow is None or job.flow is None or not job.flow.limited:
            return self._run_once(delivery, settlement, job)
        turn = self._turn(job, delivery, wait_up_to)
        while (pause := turn.pause()) is not None:
            time.sleep(pause)
        if not turn.admission.admitted:
            return self._defer(delivery, turn.admission.wait, settlement)
        try:
            return self._run_once(delivery, settlement, job)
        finally:
            turn.admission.release()

    def _run_once(
        self, delivery: Delivery, settlement: Settlement, job: Job[Any, Any]
    ) -> JobOutcome:
        run = self._execute(delivery, job)
        if self.needs_event_loop(job):
            outcome: JobOutcome = run_coroutine_blocking(run)
        else:
            outcome = drive_without_loop(run)
        return settle(delivery, outcome, settlement)

    def _execute(self, delivery: Delivery, job: Job[Any, Any]) -> Coroutine[Any, Any, JobOutcome]:
        return execute(
            job,
            delivery.data,
            self.context,
            delivery.attempt,
            delivery.dispatch_id,
            self._events,
            self.max_retry_wait,
        )

    async def run_async(
        self,
        delivery: Delivery,
        settlement: Settlement,
        job: Job[Any, Any] | None = None,
        *,
        wait_up_to: float = WAIT_IN_WORKER,
    ) -> JobOutcome:
        """`run` inside a running event loop (flow-control waits do not block the loop)."""
        job = job or self._job(delivery, settlement)
        if job is None:
            return _UNKNOWN_OUTCOME
        if self.flow is None or job.flow is None or not job.flow.limited:
            return await self._run_once_async(delivery, settlement, job)
        turn = self._turn(job, delivery, wait_up_to)
        while (pause := turn.pause()) is not None:
            await asyncio.sleep(pause)
        if not turn.admission.admitted:
            return self._defer(delivery, turn.admission.wait, settlement)
        try:
            return await self._run_once_async(delivery, settlement, job)
        finally:
            turn.admission.release()

    async def _run_once_async(
        self, delivery: Delivery, settlement: Settlement, job: Job[Any, Any]
    ) -> JobOutcome:
        outcome = await self._execute(delivery, job)
        return settle(delivery, outcome, settlement)

    def run_in_process(
        self, job: Job[Any, Any], data: Any, dispatch_id: str, settlement: Settlement, wait: bool
    ) -> JobOutcome:
        """Run `job` attempt after attempt in this thread until it completes or gives up (the
        inline policy); with `wait`, sleep each retry's delay first. Flow-control waits are
        always waited here."""
        for attempt in itertools.count():
            delivery = Delivery(job.name, data, attempt, dispatch_id)
            outcome = self.run(delivery, settlement, job, wait_up_to=math.inf)
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
            outcome = await self.run_async(delivery, settlement, job, wait_up_to=math.inf)
            if not outcome.should_retry:
                return outcome
            if wait and outcome.retry_in:
                await asyncio.sleep(outcome.retry_in.total_seconds())
        raise AssertionError("unreachable")

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

    def _turn(self, job: Job[Any, Any], delivery: Delivery, budget: float) -> _Turn:
        assert job.flow is not None
        resources = job.flow.resources(job.name, delivery.data)
        waiter = delivery.dispatch_id or uuid.uuid4().hex
        return _Turn(lambda: self._admit(job.name, delivery, resources, waiter), budget)

    def _admit(
        self, job_name: str, delivery: Delivery, resources: Sequence[Resource], waiter: str
    ) -> Admission:
        """Ask the limiter whether `delivery` may start now; a store that cannot be reached
        defers the run (it is not a failure of the job, and uses no attempt)."""
        assert self.flow is not None
        try:
            return self.flow.admit(resources, waiter)
        except JobsError:
            raise
        except Exception as error:
            logger.warning(
                "job %r (dispatch_id=%s): the flow-control store did not answer (%s); "
                "the run waits %gs",
                job_name,
                delivery.dispatch_id,
                describe_error(error),
                STORE_ERROR_WAIT,
            )
            return Admission(STORE_ERROR_WAIT)

    def _defer(self, delivery: Delivery, wait: float, settlement: Settlement) -> JobOutcome:
        if not isinstance(settlement, Deferral):
            raise TypeError(
                f"{type(settlement).__name__} cannot defer a run; a backend whose worker has a "
                "flow limiter must give a settlement with defer()"
            )
        delay = timedelta(seconds=min(wait, MAX_DEFER))
        logger.debug(
            "job %r (dispatch_id=%s, attempt %d) waits %.3fs for its flow-control turn",
            delivery.job_name,
            delivery.dispatch_id,
            delivery.attempt,
            delay.total_seconds(),
        )
        settlement.defer(delivery, delay)
        return JobOutcome("deferred", delivery.attempt, retry_in=delay)

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


class _Turn:
    """A run's wait for its flow-control turn: ask the limiter, wait what it says, ask again,
    for as long as the total wait stays within `budget` seconds."""

    __slots__ = ("admission", "ask", "budget", "waited")

    def __init__(self, ask: Callable[[], Admission], budget: float) -> None:
        self.ask = ask
        self.budget = budget
        self.waited = 0.0
        self.admission = ask()

    def pause(self) -> float | None:
        """Seconds to wait before asking again, or None when `admission` is the answer."""
        if self.waited:
            self.admission = self.ask()
        wait = self.admission.wait
        if wait <= 0 or self.waited + wait > self.budget:
            return None
        self.waited += wait
        return wait


def settle(delivery: Delivery, outcome: JobOutcome, settlement: Settlement) -> JobOutcome:
    """Carry out `outcome` through `settlement` (the one place the outcome is switched on)."""
    if outcome.should_retry:
        settlement.retry(delivery, outcome.retry_in or timedelta(0))
    elif outcome.gave_up:
        assert outcome.error is not None
        settlement.give_up(delivery, outcome.error)
    return outcome
