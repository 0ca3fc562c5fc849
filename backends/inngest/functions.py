"""The Inngest worker side: each job is an Inngest function triggered by the event of its name.

A job's function (id and trigger = the job's name, `retries` = `retry.attempts`, flow control
mapped onto Inngest's) runs each call through the core's worker; the core's decision becomes
the SDK's answer (`RetryAfterError` with the core's wait, `NonRetriableError` for a give-up). A
job with `on_failure` also gets the SDK's failure function: the hook's safety net for a run
Inngest failed without the worker's answer.
"""

from __future__ import annotations

import logging
import warnings
from datetime import datetime, timedelta, timezone
from typing import Any

import inngest

from jobs_core.backend import require_context
from jobs_core.errors import StepError, WorkerLostError
from jobs_core.events.event import JOB_FAILED, JobFailed
from jobs_core.hooks import carried
from jobs_core.instrumentation import Instrumentation, describe_error
from jobs_core.jobs.job import Job
from jobs_core.jobs.registry import JobRegistry
from jobs_core.steps.rules import output_adapter, to_json
from jobs_core.worker import ContextSource, Delivery, JobWorker, Outcome

from .dispatcher import (
    BACKEND,
    DATA_KEY,
    GAVE_UP,
    GAVE_UP_AT,
    check_job_name,
    create_inngest_client,
)
from .fixes import retry_failure_function
from .flow import flow_options
from .schedules import create_inngest_schedule_functions
from .steps import InngestRunSteps

logger = logging.getLogger("jobs_core.backends.inngest")

MAX_RETRY_WAIT = timedelta(hours=24) - timedelta(seconds=1)
"""Inngest cuts a retry's wait to 24 h (ours round up to a whole second): longer is refused."""


class _Settlement:
    """The core's decisions as the SDK's errors, which the Inngest executor acts on."""

    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        # Inngest reads retry-after in whole seconds and moves a time less than 1 s away to
        # the next second + 1 s: a whole second at or after now + delay is never run early.
        at = datetime.now(timezone.utc) + delay
        at += timedelta(microseconds=-at.microsecond) + timedelta(seconds=bool(at.microsecond))
        message = f"job {delivery.job_name!r} will retry"
        raise inngest.RetryAfterError(message, retry_after=at, quiet=True)

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        where = f"on job {delivery.job_name!r} at attempt {delivery.attempt}"
        message = f"{GAVE_UP} {where}: {describe_error(error)}"
        raise inngest.NonRetriableError(message, quiet=True)


SETTLEMENT = _Settlement()


FUNCTION_FAILED = "inngest/function.failed"


def _job_failed(
    job: Job[Any, Any], ctx: inngest.Context | inngest.ContextSync, app_id: str
) -> Delivery | None:
    """A run of `job` (on `JOB_FAILED`) for Inngest's `inngest/function.failed`: the failed
    run as `JobFailed`, when it was a run of a job of `job`'s registry (not one on `JOB_FAILED`
    itself: no loop); None for a failure of anything else."""
    data = ctx.event.data
    function_id = str(data.get("function_id") or "")
    failed = {
        f"{app_id}-{other.name}": other
        for other in (job.registry or ())
        if other.on is not JOB_FAILED
    }.get(function_id)
    if failed is None:
        return None
    error: Any = data.get("error")
    error = error if isinstance(error, dict) else {}
    original: Any = data.get("event")
    original = original if isinstance(original, dict) else {}
    message = str(error.get("message") or "")
    ours = GAVE_UP_AT.match(message)
    if ours is not None:  # the core gave up, and said how
        attempt, described = int(ours.group(1)), ours.group(2)
    else:  # Inngest failed the run without the worker's answer
        attempt = failed.retry.attempts
        described = f"WorkerLostError: {error.get('name') or 'Error'}: {message[:300]}"
    event_id = original.get("id")
    report = JobFailed(
        job_name=failed.name,
        dispatch_id=str(event_id) if event_id else None,
        attempt=attempt,
        error=described,
    )
    return Delivery(job.name, report.model_dump(), ctx.attempt, f"failed:{event_id}")


def _delivery(
    job: Job[Any, Any], ctx: inngest.Context | inngest.ContextSync, client: Any = None
) -> Delivery:
    event_id = getattr(ctx.event, "id", None)
    steps = InngestRunSteps(ctx, client) if job.takes_steps else None
    data: Any = ctx.event.data
    headers = None
    if isinstance(data, dict) and DATA_KEY in data:  # what hooks (tracing) sent with the job
        data = dict(data)
        headers = carried(data.pop(DATA_KEY))
    return Delivery(
        job.name, data, ctx.attempt, str(event_id) if event_id else None, steps, headers
    )


def _returned(job: Job[Any, Any], outcome: Outcome) -> Any:
    """What the function returns to Inngest: the handler's value as JSON, for a parent that
    invoked the job (`step.invoke`, C43); None when it has none that JSON can hold."""
    if not outcome.completed or outcome.value is None:
        return None
    try:
        return to_json(job.name, "(return value)", output_adapter(job.handler), outcome.value)[0]
    except StepError as error:
        logger.warning("%s: its return value is not returned to Inngest: %s", job.name, error)
        return None


def _lost(
    job: Job[Any, Any], ctx: inngest.Context | inngest.ContextSync
) -> tuple[Delivery, WorkerLostError] | None:
    """The failed run's delivery and error, unless the core's own give-up ran `on_failure`."""
    data = ctx.event.data
    error, original = data.get("error"), data.get("event")
    error = error if isinstance(error, dict) else {"message": str(error)}
    original = original if isinstance(original, dict) else {}
    message = str(error.get("message") or "")
    if GAVE_UP in message:
        return None
    why = f"{error.get('name') or 'Error'}: {message[:300]}"
    lost = WorkerLostError(f"Inngest failed run {data.get('run_id')} without an answer ({why})")
    event_id = original.get("id")
    attempt = job.retry.attempts
    return Delivery(job.name, original.get("data"), attempt, event_id and str(event_id)), lost


def _worker(
    registry: JobRegistry[Any] | None, context: ContextSource, instrumentation: Any
) -> JobWorker[Any]:
    return JobWorker(
        registry,
        context=context,
        backend=BACKEND,
        instrumentation=instrumentation,
        max_retry_wait=MAX_RETRY_WAIT,
        native_steps=True,  # Inngest keeps a run's steps: `InngestRunSteps`
    )


def create_inngest_job_function(
    client: inngest.Inngest,
    job: Job[Any, Any],
    context: ContextSource,
    instrumentation: Instrumentation | None = None,
    worker: JobWorker[Any] | None = None,
) -> inngest.Function[Any]:
    """The Inngest function that runs `job`: id and trigger event = the job's name. Async when
    a part of a run is async (it runs on the server's loop); sync otherwise, in the SDK's thread
    pool with no event loop (what Django's ORM needs). A name or retry policy Inngest cannot
    honour is a `JobConfigError` here (C28)."""
    worker = worker or _worker(None, context, instrumentation)
    check_job_name(job)
    worker.check(job, SETTLEMENT)
    handler: Any
    on_failure: Any
    app_id = client.app_id

    def delivery_of(ctx: inngest.Context | inngest.ContextSync) -> Delivery | None:
        if job.on is JOB_FAILED and ctx.event.name == FUNCTION_FAILED:
            return _job_failed(job, ctx, app_id)
        return _delivery(job, ctx, client)

    if worker.needs_event_loop(job):

        async def handler(ctx: inngest.Context) -> Any:
            delivery = delivery_of(ctx)
            if delivery is not None:
                return _returned(job, await worker.run_async(delivery, SETTLEMENT, job))
            return None

        async def on_failure(ctx: inngest.Context) -> None:
            lost = _lost(job, ctx)
            if lost is not None:
                await worker.backend_gave_up_async(job, *lost)

    else:

        def handler(ctx: inngest.ContextSync) -> Any:
            delivery = delivery_of(ctx)
            if delivery is not None:
                return _returned(job, worker.run(delivery, SETTLEMENT, job))
            return None

        def on_failure(ctx: inngest.ContextSync) -> None:
            lost = _lost(job, ctx)
            if lost is not None:
                worker.backend_gave_up(job, *lost)

    return retry_failure_function(  # the safety net is not lost with the only worker (C13)
        client.create_function(
            fn_id=job.name,
            name=job.name,
            retries=job.retry.attempts,
            trigger=_triggers(job),
            on_failure=on_failure if job.on_failure is not None else None,
            **flow_options(job),  # C25, C26; a period Inngest cannot take is refused (C28)
        )(handler)
    )


def _triggers(job: Job[Any, Any]) -> list[inngest.TriggerEvent | inngest.TriggerCron]:
    """The events that run a job's function: its name (a dispatch), and the event it is
    defined `on=` (a `send`: the server fans it out to every function it triggers)."""
    triggers: list[inngest.TriggerEvent | inngest.TriggerCron] = [
        inngest.TriggerEvent(event=job.name)
    ]
    if job.on is JOB_FAILED:  # fed by the server's own failure event (C44)
        triggers.append(inngest.TriggerEvent(event=FUNCTION_FAILED))
    elif job.on is not None:
        triggers.append(inngest.TriggerEvent(event=job.on.name))
    return triggers


def create_inngest_functions(
    registry: JobRegistry[Any] | inngest.Inngest,
    *args: Any,
    context: ContextSource = None,
    instrumentation: Instrumentation | None = None,
    client: inngest.Inngest | None = None,
) -> list[inngest.Function[Any]]:
    """One Inngest function per job of `registry` (see `create_inngest_job_function`), and one
    cron function per schedule (see `create_inngest_schedule_functions`), for `client` (default:
    `create_inngest_client()`, from `INNGEST_*` and `INNGEST_APP_NAME`): the shape of every
    backend's worker factory, `(registry, *, context, instrumentation, ...)`.

    The earlier form `create_inngest_functions(client, registry, context, instrumentation)`
    still works, with a `DeprecationWarning`.
    """
    if isinstance(registry, inngest.Inngest):
        warnings.warn(
            "create_inngest_functions(client, registry, ...) is deprecated: write "
            "create_inngest_functions(registry, context=..., client=client)",
            DeprecationWarning,
            stacklevel=2,
        )
        client, registry, args = registry, args[0], args[1:]
        context = args[0] if args else context
        instrumentation = args[1] if len(args) > 1 else instrumentation
    elif args:
        raise TypeError("create_inngest_functions takes the registry, then keywords only")
    assert isinstance(registry, JobRegistry)
    require_context(registry, context, "context= to create_inngest_functions")
    client = client or create_inngest_client()
    worker = _worker(registry, context, instrumentation)
    jobs = [create_inngest_job_function(client, job, context, worker=worker) for job in registry]
    registry.built_into("the Inngest functions of create_inngest_functions")
    return jobs + create_inngest_schedule_functions(client, registry, instrumentation)
