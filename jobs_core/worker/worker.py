"""The one worker path: a backend hands the core a `Delivery`; the core runs it once, decides how
it ended, and carries the decision out through the backend's `Settlement`.

Following one delivery through `JobWorker.run`:

1. the job is looked up by name; an unknown name is reported and given up (C17);
2. a job with concurrency or throttle limits (C25, C26) waits for its turn with the worker's
   `FlowLimiter`, in the worker for up to `WAIT_IN_WORKER`, else the run is put back as the same
   attempt through the backend's `Deferral` (it did not start: no attempt, no event);
3. `execute` runs it once: the payload is parsed (C16), the context made (C18), the handler
   called, and `decide` judges the outcome (C11–C15): completed; retry after the core's backoff
   or `RetryLater`'s delay if attempts are left; give up otherwise, or at once on
   `PermanentError` and bad input. On a give-up `on_failure` runs here, once;
4. `settle` carries the outcome out: the backend's `retry(delivery, delay)` or
   `give_up(delivery, error)`. Every outcome records the same events on every backend (C19).

Unknown job names and messages that cannot be read are reported here too, the same way on every
backend; the adapter then keeps the message where an operator finds it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

from ..calling import is_async_callable, run_on_thread_loop, run_without_loop
from ..errors import (
    JobConfigError,
    JobPayloadError,
    JobsError,
    PermanentError,
    RetryLater,
    StepError,
    UnknownJobError,
)
from ..events.event import JOB_FAILED, JobFailed
from ..flow.limiter import MAX_DEFER, STORE_ERROR_WAIT, WAIT_IN_WORKER, Admission, FlowLimiter
from ..flow.options import Resource
from ..hooks import HOOKS
from ..hooks import running as hooked_run
from ..hooks import step as step_hooks
from ..instrumentation import (
    EventKind,
    Instrumentation,
    JobEvent,
    describe_error,
    interest,
    safe_record,
    with_logging,
)
from ..jobs.job import Job
from ..jobs.payload import parse_payload
from ..jobs.registry import JobRegistry
from ..steps.engine import EngineSteps, EngineStepsSync, StepsRun
from ..steps.resume import Sweeper, resume
from ..steps.rules import (
    GIVE_UP_AT_ONCE,
    BackendSteps,
    RecordEvent,
    StepRetry,
    output_adapter,
    to_json,
)
from ..steps.store import DEFAULT_RETENTION, StepStore
from ..steps.waits import INVOKE_DONE

logger = logging.getLogger("jobs_core.worker")

C = TypeVar("C")

ContextSource = Any
"""A context object, or a sync or async factory (any callable) called once per run."""

UNKNOWN_JOB = "<unknown>"
"""The job name reported for a message so malformed that it names no job."""

BROKER_AWAY_SECONDS = 300.0
"""How long a worker keeps trying to send a message its job needs (a retry, a deferral, a
delayed job that is due) while the broker cannot be reached: the same on every backend."""


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
    steps: BackendSteps | None = None
    """The steps a backend keeps itself (Inngest's), for a job with steps; None: the core's
    engine keeps them in the worker's step store."""
    headers: Mapping[str, str] | None = None
    """What the job's message carried besides its payload (`jobs_core.hooks`: tracing)."""


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
    """How a backend's library puts back a run that waits for its flow-control turn, or a run
    with steps that goes on later (a sleep, a step's retry: the core counts those attempts)."""

    def defer(self, delivery: Delivery, delay: timedelta) -> None:
        """Deliver `delivery` again, as the same attempt, no earlier than `delay` from now,
        without counting a retry: the broker's own retry count stays as it was."""
        ...


# -- how a run ended -------------------------------------------------------------------------

Status = Literal["completed", "retry", "failed", "deferred", "continued", "parked"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run ended, and what the backend must do next: `retry_in` is set for `retry`
    (the next run starts no earlier), `deferred` (flow control: the same attempt runs then)
    and `continued` (a run with steps goes on in a later delivery, as the same attempt: a
    step's retry, a sleep); `error` is what the handler (or the payload parser) raised."""

    status: Status
    attempt: int
    error: BaseException | None = None
    retry_in: timedelta | None = None
    value: Any = None
    """What the handler returned, for `completed` (a parent's `step.invoke` reads it)."""

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

    @property
    def continued(self) -> bool:
        return self.status == "continued"

    @property
    def parked(self) -> bool:
        """The run waits for an event or a child: acknowledged, and delivered again by what
        resumes it."""
        return self.status == "parked"


def decide(
    job: Job[Any, Any], error: BaseException, attempt: int, max_retry_wait: timedelta | None
) -> Outcome:
    """Retry or give up for `error` raised on `attempt` (0-based): bad input and
    `PermanentError` give up at once; so do spent attempts, and a wait longer than
    `max_retry_wait` (what the backend can keep between attempts), saying why."""
    if isinstance(error, GIVE_UP_AT_ONCE):
        return Outcome("failed", attempt, error)
    if attempt >= job.retry.attempts:
        return Outcome("failed", attempt, error)
    wait = error.delay if isinstance(error, RetryLater) else job.retry.backoff(attempt + 1)
    if max_retry_wait is not None and wait > max_retry_wait:
        refused = PermanentError(
            f"a retry after {wait} is longer than this backend waits between attempts "
            f"({max_retry_wait}); dispatch a new job with delay= instead"
        )
        refused.__cause__ = error
        return Outcome("failed", attempt, refused)
    return Outcome("retry", attempt, error, wait)


class RunEvents:
    """Where the execute events of runs go: each built only when the instrumentation (the
    default logging added) wants its kind, so a run nobody watches pays for no event."""

    def __init__(self, instrumentation: Instrumentation | None, backend: str) -> None:
        self.instrumentation = with_logging(instrumentation)
        self.wants = interest(self.instrumentation)
        self.backend = backend

    def record(
        self,
        kind: EventKind,
        delivery: Delivery,
        started: float | None = None,
        error: BaseException | str | None = None,
        retry_in: timedelta | None = None,
        ended: float | None = None,
        step_id: str | None = None,
    ) -> None:
        """Record `kind` for `delivery`; `started` and `ended` (`perf_counter`s, `ended`
        default now) give the event its duration."""
        if not self.wants(kind):
            return
        duration = None
        if started is not None:
            duration = timedelta(seconds=(ended or time.perf_counter()) - started)
        described = error if error is None or isinstance(error, str) else describe_error(error)
        event = JobEvent(
            kind,
            "execute",
            delivery.job_name,
            delivery.dispatch_id,
            delivery.attempt,
            self.backend,
            error=described,
            duration=duration,
            retry_in=retry_in,
            step_id=step_id,
        )
        safe_record(self.instrumentation, event)


async def _context(context: ContextSource) -> Any:
    if not callable(context):
        return context
    made = context()
    return await made if inspect.isawaitable(made) else made


async def execute(
    job: Job[Any, Any],
    delivery: Delivery,
    context: ContextSource,
    events: RunEvents,
    max_retry_wait: timedelta | None,
    steps: StepsSetup | None = None,
) -> Outcome:
    """Run `delivery` of `job` once and decide how it ended; on a give-up, `on_failure` runs
    here (once) before `failed` is recorded. A job with steps runs on `steps`' store."""
    native = delivery.steps if job.takes_steps else None
    if job.takes_steps and native is None:
        if steps is None:
            raise JobConfigError(f"job {job.name!r} has steps, and this worker has no step store")
        return await _execute_steps(job, delivery, context, events, steps)
    if native is None or native.first_delivery:
        events.record("started", delivery)
    started = time.perf_counter()
    payload: Any = delivery.data
    ctx: Any = None
    have_ctx = False
    try:
        payload = parse_payload(job, delivery.data)
        if job.takes_context:
            ctx = await _context(context)
            have_ctx = True
        if native is None:
            result = job.run_handler(payload, ctx)
        else:
            result = job.run_handler(payload, ctx, native.bind(job, _step_events(events, delivery)))
        if inspect.isawaitable(result):
            result = await result
    except StepRetry as retry:  # `step.failed` says it already
        return Outcome("retry", delivery.attempt, retry.error, retry.delay)
    except Exception as error:
        outcome = decide(job, error, delivery.attempt, max_retry_wait)
    else:
        events.record("completed", delivery, started)
        return Outcome("completed", delivery.attempt, value=result)

    assert outcome.error is not None
    if outcome.should_retry:
        events.record("retrying", delivery, started, outcome.error, outcome.retry_in)
        return outcome
    ended = time.perf_counter()
    if not have_ctx:
        ctx = await _failure_context(job, context)
    await _call_on_failure(job, outcome.error, payload, ctx, delivery)
    events.record("failed", delivery, started, outcome.error, ended=ended)
    return outcome


@dataclass(frozen=True)
class StepsSetup:
    """How a worker runs jobs with steps: the store that keeps them, whether sleeps and step
    retries wait (inline: not unless asked, C15, C37), and how long a finished run's records
    stay."""

    store: StepStore
    wait_sleeps: bool = True
    wait_backoff: bool = True
    retention: timedelta = DEFAULT_RETENTION
    outbound: Callable[[], Any] | None = None
    """The dispatcher runs send events and invoke jobs through (the worker's)."""


def _step_events(events: RunEvents, delivery: Delivery) -> RecordEvent:
    """Where a run's step events go: `events`, with the step's own attempt."""

    def record(
        kind: str,
        step_id: str | None = None,
        attempt: int = 0,
        error: BaseException | None = None,
        retry_in: timedelta | None = None,
    ) -> None:
        at = Delivery(delivery.job_name, delivery.data, attempt, delivery.dispatch_id)
        events.record(kind, at, error=error, retry_in=retry_in, step_id=step_id)  # type: ignore[arg-type]
        if HOOKS:
            step_hooks(kind, step_id, attempt, error)

    return record


async def _execute_steps(
    job: Job[Any, Any],
    delivery: Delivery,
    context: ContextSource,
    events: RunEvents,
    setup: StepsSetup,
) -> Outcome:
    """One delivery of a run with steps (`jobs_core.steps.engine`): the handler replays from
    its start, kept steps return their values, and the delivery ends when the handler returns,
    a step fails, a sleep begins, or the run gives up."""
    started = time.perf_counter()
    run = StepsRun(
        job,
        delivery.dispatch_id or "",
        setup.store,
        _step_events(events, delivery),
        wait_sleeps=setup.wait_sleeps,
        wait_backoff=setup.wait_backoff,
        data=delivery.data,
        outbound=setup.outbound,
    )
    payload: Any = delivery.data
    ctx: Any = None
    result: Any = None
    try:
        run.load()
        payload = parse_payload(job, delivery.data)
        ctx = await _context(context)
        made = EngineSteps if job.handler_is_async else EngineStepsSync
        steps = made(run, payload)
        result = job.run_handler(payload, ctx, steps)
        if inspect.isawaitable(result):
            result = await result
        ending = run.ending(None)
    except BaseException as error:
        ending = run.ending(error)
    finally:
        await run.steps_settled()
    if ending.kind == "later":
        return Outcome("continued", delivery.attempt, ending.error, ending.delay)
    if ending.kind == "park":
        return Outcome("parked", delivery.attempt)
    if ending.kind == "done":
        events.record("completed", delivery, started)
        outcome = Outcome("completed", delivery.attempt, value=result)
    else:
        assert ending.error is not None
        ended = time.perf_counter()
        if ctx is None:
            ctx = await _failure_context(job, context)
        await _call_on_failure(job, ending.error, payload, ctx, delivery)
        events.record("failed", delivery, started, ending.error, ended=ended)
        outcome = Outcome("failed", delivery.attempt, ending.error)
    try:
        setup.store.finish(run.run_id, setup.retention)
    except Exception as error:  # the run has ended all the same; its records stay longer
        logger.warning(
            "job %r: could not set the expiry of run %s's steps: %s", job.name, run.run_id, error
        )
    return outcome


async def _failure_context(job: Job[Any, Any], context: ContextSource) -> Any:
    """The context for `on_failure` when the run never got one (bad input): made now."""
    if job.on_failure is None:
        return None
    try:
        return await _context(context)
    except Exception:
        logger.exception("job %r: context factory failed before on_failure", job.name)
        return None


async def _call_on_failure(
    job: Job[Any, Any], error: BaseException, payload: Any, ctx: Any, delivery: Delivery
) -> None:
    if job.on_failure is None:
        return
    try:
        result = job.on_failure(error, payload, ctx)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception(
            "job %r: on_failure raised (dispatch_id=%s)", job.name, delivery.dispatch_id
        )


def settle(delivery: Delivery, outcome: Outcome, settlement: Settlement) -> Outcome:
    """Carry out `outcome` through `settlement` (the one place the outcome is switched on)."""
    if outcome.should_retry:
        settlement.retry(delivery, outcome.retry_in or timedelta(0))
    elif outcome.continued:
        assert isinstance(settlement, Deferral)  # JobWorker.check: a job with steps needs defer
        settlement.defer(delivery, outcome.retry_in or timedelta(0))
    elif outcome.gave_up:
        assert outcome.error is not None
        settlement.give_up(delivery, outcome.error)
    return outcome


# -- the worker --------------------------------------------------------------------------------


class JobWorker(Generic[C]):
    """Runs the deliveries of one registry's jobs and settles their outcomes (the worker seam).

    `context` is a ctx object, or a sync or async factory called once per run;
    `instrumentation` is added to the default logging. `flow` admits the runs of jobs with
    concurrency or throttle options (None: the backend enforces them itself, or none is set).
    `max_retry_wait` is the longest wait the backend keeps between attempts (a longer one gives
    up, saying so). `steps` is how jobs with steps are run (their store; None: this worker
    runs none; `native_steps`: the backend keeps them itself, each delivery brings them, as
    `Delivery.steps`). An adapter calls `check(job, settlement)` for each job as it builds the job's
    task, so that what this worker cannot do with the job is refused then (C28).
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
        steps: StepsSetup | None = None,
        native_steps: bool = False,
    ) -> None:
        self.registry = registry
        self.steps = steps
        self._outbound: Callable[[], Any] | None = None
        self.sweeper: Sweeper | None = None
        self.native_steps = native_steps
        self._needs_loop: dict[str, bool] = {}
        self.context = context
        self.backend = backend
        self.events = RunEvents(instrumentation, backend)
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
        return self.events.instrumentation

    def check(self, job: Job[Any, Any], settlement: Settlement | None = None) -> None:
        """Refuse (C28) a job whose retry policy waits longer than `max_retry_wait`, a job with
        flow limits whose `settlement` cannot defer a run while this worker limits runs, and a
        job with steps when there is no step store or no `defer` to resume its runs with."""
        waits = [job.retry.base_backoff(k) for k in range(1, job.retry.attempts + 1)]
        if self.max_retry_wait is not None and waits and max(waits) > self.max_retry_wait:
            raise JobConfigError(
                f"job {job.name!r}: option 'retry' waits up to {max(waits)} between attempts; "
                f"the {self.backend} backend waits at most {self.max_retry_wait}: lower "
                "max_backoff"
            )
        limited = self.flow is not None and job.flow is not None and job.flow.limited
        engine_steps = job.takes_steps and not self.native_steps
        if (limited or engine_steps) and settlement is not None:
            if not isinstance(settlement, Deferral):
                why = "its flow limits may make a run wait" if limited else "it has steps"
                raise JobConfigError(
                    f"job {job.name!r}: {why}, and the {self.backend} worker's "
                    f"{type(settlement).__name__} cannot defer a run to later (it has no defer())"
                )
        if engine_steps and self.steps is None:
            raise JobConfigError(
                f"job {job.name!r} has steps, and the {self.backend} worker has no step store "
                "to keep them in: set JOBS_STEP_STORE_URL (redis://..., or a database URL)"
            )

    def needs_event_loop(self, job: Job[Any, Any]) -> bool:
        """True when a run of `job` has an async part (handler, context factory, hook)."""
        needs = self._needs_loop.get(job.name)
        if needs is None:
            context = self.context
            needs = (
                job.handler_is_async
                or (callable(context) and is_async_callable(context))
                or (job.on_failure is not None and is_async_callable(job.on_failure))
            )
            self._needs_loop[job.name] = needs
        return needs

    def _run_to_end(self, job: Job[Any, Any], coro: Coroutine[Any, Any, Any]) -> Any:
        if self.needs_event_loop(job):
            return run_on_thread_loop(coro, "await ctx.jobs.dispatch(...)")
        return run_without_loop(coro)

    def run(
        self,
        delivery: Delivery,
        settlement: Settlement,
        job: Job[Any, Any] | None = None,
        *,
        wait_up_to: float = WAIT_IN_WORKER,
    ) -> Outcome:
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

    def _run_once(self, delivery: Delivery, settlement: Settlement, job: Job[Any, Any]) -> Outcome:
        if HOOKS:
            with self._hooked(job, delivery) as scope:
                outcome = self._outcome(delivery, job)
                scope.ended(outcome)  # before the settlement, which may raise (a retry)
                return settle(delivery, outcome, settlement)
        return settle(delivery, self._outcome(delivery, job), settlement)

    def _hooked(self, job: Job[Any, Any], delivery: Delivery) -> Any:
        """Every hook's view of this run (`jobs_core.hooks`: tracing)."""
        return hooked_run(
            self.backend, job.name, delivery.dispatch_id, delivery.attempt, delivery.headers
        )

    def _outcome(self, delivery: Delivery, job: Job[Any, Any]) -> Outcome:
        """Run `delivery` once and decide; a give-up is announced (`JOB_FAILED`), and the
        parent of an invoked run hears of its end."""
        run = execute(job, delivery, self.context, self.events, self.max_retry_wait, self.steps)
        outcome: Outcome = self._run_to_end(job, run)
        if outcome.gave_up:
            self._announce_sync(job, delivery, outcome.error)
        self._ended(job, delivery, outcome)
        return outcome

    @property
    def outbound(self) -> Callable[[], Any] | None:
        """The dispatcher (made when first needed) this worker sends `JOB_FAILED` through, and
        its runs send events, invoke jobs and resume waiting runs through; None where the
        backend does these itself (Inngest)."""
        return self._outbound

    @outbound.setter
    def outbound(self, value: Callable[[], Any] | None) -> None:
        self._outbound = value
        if self.steps is not None:
            self.steps = dataclasses.replace(self.steps, outbound=value)

    def start_sweeping(self) -> None:
        """End the waits past their deadline in a thread of this process (Celery, Dramatiq:
        each worker process sweeps; a wait ends once, whoever sweeps it)."""
        waits = getattr(self.steps.store, "waits", None) if self.steps is not None else None
        outbound, registry = self._outbound, self.registry
        if waits is None or outbound is None or registry is None or self.sweeper is not None:
            return
        if not any(job.takes_steps for job in registry):
            return
        self.sweeper = Sweeper(waits, lambda due: resume(outbound(), waits, due, registry.get))
        self.sweeper.start()

    def close(self) -> None:
        """Stop this worker's sweeper, if it has one."""
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None

    def _ended(self, job: Job[Any, Any], delivery: Delivery, outcome: Outcome) -> None:
        """A run that a parent invoked ended: its parent is delivered again with the result
        (C43). Children are known by their dispatch id, `<job>:invoke:<parent run>:<step>`."""
        if not (outcome.completed or outcome.gave_up):
            return
        run_id = delivery.dispatch_id or ""
        waits = getattr(self.steps.store, "waits", None) if self.steps is not None else None
        if ":invoke:" not in run_id or waits is None or self._outbound is None:
            return
        data: dict[str, Any] = {"dispatch_id": run_id}
        if outcome.completed:
            try:
                adapter = output_adapter(job.handler)
                data["ok"] = to_json(job.name, "(return value)", adapter, outcome.value)[0]
            except StepError as error:
                data["failed"] = describe_error(error)
        else:
            data["failed"] = describe_error(outcome.error) if outcome.error else "gave up"
        registry = self.registry or job.registry
        lookup = registry.get if registry is not None else (lambda _: None)
        try:
            waiting = waits.take_matching(INVOKE_DONE, data)
            resume(self._outbound(), waits, waiting, lookup)
        except Exception:
            logger.exception("run %s ended; could not deliver the run that invoked it", run_id)

    # -- JOB_FAILED (C44) --------------------------------------------------------------------

    def _job_failed(
        self, job: Job[Any, Any], delivery: Delivery, error: BaseException | None
    ) -> list[Any]:
        """The dispatches of `JOB_FAILED` for a give-up of `job`: one per job of its registry
        on it, keyed by the failed run (sent once); none from a job that is itself on
        `JOB_FAILED` (no loop), or where the backend sends it itself (Inngest)."""
        if self.outbound is None or job.on is JOB_FAILED or job.registry is None:
            return []
        listeners = job.registry.jobs_on(JOB_FAILED)
        if not listeners:
            return []
        data = JobFailed(
            job_name=job.name,
            dispatch_id=delivery.dispatch_id,
            attempt=delivery.attempt,
            error=describe_error(error) if error is not None else "",
        )
        key = f"failed:{delivery.dispatch_id}" if delivery.dispatch_id else None
        return [listener.request(data, idempotency_key=key) for listener in listeners]

    def _announce_sync(
        self, job: Job[Any, Any], delivery: Delivery, error: BaseException | None
    ) -> None:
        requests = self._job_failed(job, delivery, error)
        if requests:
            assert self.outbound is not None
            try:
                self.outbound().dispatch_many_sync(requests)
            except Exception:
                logger.exception("job %r gave up; could not send JOB_FAILED", job.name)

    async def _announce(
        self, job: Job[Any, Any], delivery: Delivery, error: BaseException | None
    ) -> None:
        requests = self._job_failed(job, delivery, error)
        if requests:
            assert self.outbound is not None
            try:
                await self.outbound().dispatch_many(requests)
            except Exception:
                logger.exception("job %r gave up; could not send JOB_FAILED", job.name)

    async def run_async(
        self,
        delivery: Delivery,
        settlement: Settlement,
        job: Job[Any, Any] | None = None,
        *,
        wait_up_to: float = WAIT_IN_WORKER,
    ) -> Outcome:
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
    ) -> Outcome:
        if HOOKS:
            with self._hooked(job, delivery) as scope:
                outcome = await self._outcome_async(delivery, job)
                scope.ended(outcome)  # before the settlement, which may raise (a retry)
                return settle(delivery, outcome, settlement)
        return settle(delivery, await self._outcome_async(delivery, job), settlement)

    async def _outcome_async(self, delivery: Delivery, job: Job[Any, Any]) -> Outcome:
        """`_outcome` on the running event loop."""
        outcome = await execute(
            job, delivery, self.context, self.events, self.max_retry_wait, self.steps
        )
        if outcome.gave_up:
            await self._announce(job, delivery, outcome.error)
        if ":invoke:" in (delivery.dispatch_id or ""):  # its parent may run here: off the loop
            await asyncio.to_thread(self._ended, job, delivery, outcome)
        return outcome

    def run_in_process(
        self,
        job: Job[Any, Any],
        data: Any,
        dispatch_id: str,
        settlement: Settlement,
        wait: bool,
        headers: Mapping[str, str] | None = None,
    ) -> Outcome:
        """Run `job` attempt after attempt in this thread until it completes or gives up (the
        inline policy); with `wait`, sleep each retry's delay first. Flow-control waits are
        always waited here; a run with steps is delivered again until it ends, waiting as its
        `StepsSetup` says."""
        attempt = 0
        while True:
            delivery = Delivery(job.name, data, attempt, dispatch_id, headers=headers)
            outcome = self.run(delivery, settlement, job, wait_up_to=math.inf)
            pause = _pause_before_next_delivery(outcome, wait)
            if pause is None:
                return outcome
            if pause:
                time.sleep(pause)
            attempt += outcome.should_retry

    async def run_in_process_async(
        self,
        job: Job[Any, Any],
        data: Any,
        dispatch_id: str,
        settlement: Settlement,
        wait: bool,
        headers: Mapping[str, str] | None = None,
    ) -> Outcome:
        """`run_in_process` on the caller's event loop."""
        attempt = 0
        while True:
            delivery = Delivery(job.name, data, attempt, dispatch_id, headers=headers)
            outcome = await self.run_async(delivery, settlement, job, wait_up_to=math.inf)
            pause = _pause_before_next_delivery(outcome, wait)
            if pause is None:
                return outcome
            if pause:
                await asyncio.sleep(pause)
            attempt += outcome.should_retry

    async def backend_gave_up_async(
        self, job: Job[Any, Any], delivery: Delivery, error: BaseException
    ) -> None:
        """The backend failed `delivery`'s run without the worker's answer (the worker died in
        the last attempt, the call timed out; see `WorkerLostError`): run `on_failure` once with
        `error` and record `failed`, as a give-up of the core's own would."""
        try:
            payload: Any = parse_payload(job, delivery.data)
        except JobPayloadError:
            payload = delivery.data
        ctx = await _failure_context(job, self.context)
        await _call_on_failure(job, error, payload, ctx, delivery)
        self.events.record("failed", delivery, error=error)
        await self._announce(job, delivery, error)

    def backend_gave_up(self, job: Job[Any, Any], delivery: Delivery, error: BaseException) -> None:
        """`backend_gave_up_async` from sync code."""
        self._run_to_end(job, self.backend_gave_up_async(job, delivery, error))

    # -- flow control ------------------------------------------------------------------------

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

    def _defer(self, delivery: Delivery, wait: float, settlement: Settlement) -> Outcome:
        if not isinstance(settlement, Deferral):
            raise JobConfigError(
                f"{type(settlement).__name__} cannot defer a run; a backend whose worker has a "
                "flow limiter must give a settlement with defer() (see JobWorker.check)"
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
        return Outcome("deferred", delivery.attempt, retry_in=delay)

    # -- what cannot run -----------------------------------------------------------------------

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
        self.events.record("failed", delivery, error=f"UnknownJob: {error}")
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
        self.events.record("failed", delivery, error=f"MalformedMessage: {reason[:300]}")


_UNKNOWN_OUTCOME = Outcome("failed", 0)


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


def _pause_before_next_delivery(outcome: Outcome, wait: bool) -> float | None:
    """For the inline policy: None when the run ended, else the seconds to wait before
    delivering it again (a retry's delay when `wait`; a step's sleep or retry always)."""
    if not (outcome.should_retry or outcome.continued):
        return None
    if outcome.retry_in and (wait or outcome.continued):
        return outcome.retry_in.total_seconds()
    return 0.0
