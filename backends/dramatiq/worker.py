"""The Dramatiq worker: one actor per job, each message run through the core's worker.

`register_actors(registry, context=...)` declares the actors on a worker broker for the
`dramatiq` command; `run_worker` is `python -m jobs_core worker`, which runs that command with
`command_broker` (one process, 8 threads unless told otherwise). The core decides how a run
ended; `_Settlement` carries it out the Dramatiq way: `Retry(delay)` with the core's wait, a
give-up raised as `JobGaveUp` (in `throws=`: dead-lettered, not retried), a run waiting for its
flow-control turn enqueued again as the same attempt.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
from datetime import timedelta
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware

from jobs_core import hooks
from jobs_core.backend import require_context
from jobs_core.config import JobsSettings, load_context, load_registry, load_settings
from jobs_core.errors import JobConfigError
from jobs_core.flow.redis_limiter import redis_flow_limiter
from jobs_core.hooks import HEADERS_KEY, carried
from jobs_core.instrumentation import LOGGED_OUTCOMES, Instrumentation
from jobs_core.jobs.job import Job
from jobs_core.jobs.registry import JobRegistry
from jobs_core.steps.stores import step_store_for
from jobs_core.worker import ContextSource, Delivery, JobWorker, StepsSetup, delivery_from_call

from .broker import (
    BACKEND,
    DEFAULT_HEARTBEAT_TIMEOUT_MS,
    DEFAULT_MAINTENANCE_CHANCE,
    NAMESPACE,
    Broker,
    make_worker_broker,
    millis,
)
from .dispatcher import DramatiqDispatcher
from .fixes import WorkerRedisBroker
from .privacy import hide_payloads

logger = logging.getLogger("jobs_core.backends.dramatiq")


class MessageLines(logging.Filter):
    """Drops Dramatiq's own line about a job's run where jobs_core writes one for the same event
    (so each event is one line): "Retrying message" of a run jobs_core logged as `retrying`,
    "Failed to process message ... with expected exception" and "Aborting message" of a run it
    logged as `failed`. Lines about failures jobs_core did not log are kept."""

    RETRYING = "Retrying message %r in %d milliseconds."
    ABORTING = "Aborting message %r."
    EXPECTED = "Failed to process message %s with expected exception %s."

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if not args:
            return True
        if record.msg == self.RETRYING:
            return not LOGGED_OUTCOMES.logged("retrying", args[0])
        if record.msg == self.ABORTING:
            return not LOGGED_OUTCOMES.logged("failed", args[0])
        if record.msg == self.EXPECTED:
            return not LOGGED_OUTCOMES.logged("failed", _message_id(args[0]))
        return True


def _message_id(message: Any) -> str | None:
    """The id of a message in a log record's arguments: a message, or `HidePayloads`'s text of
    one (`actor(<payload>) [id]`)."""
    found = getattr(message, "message_id", None)
    if found is None and isinstance(message, str) and message.endswith("]"):
        found = message.rpartition("[")[2][:-1]
    return found if isinstance(found, str) else None


MESSAGE_LINES = MessageLines()
PER_MESSAGE_LOGGERS = ("dramatiq.worker.WorkerThread", "dramatiq.middleware.retries.Retries")


def quiet_message_logs() -> None:
    """Install `MessageLines` on Dramatiq's per-message loggers, ahead of their other filters
    (idempotent)."""
    for name in PER_MESSAGE_LOGGERS:
        log = logging.getLogger(name)
        if MESSAGE_LINES not in log.filters:
            log.filters.insert(0, MESSAGE_LINES)


class JobGaveUp(Exception):
    """Raised by an actor when the core gave up on a job: listed in `throws=`, so Dramatiq
    dead-letters the message without retrying it (`on_failure` already ran, in the core)."""

    def __init__(self, job_name: str, error: BaseException | None) -> None:
        super().__init__(f"job {job_name!r} gave up: {type(error).__name__}: {error}")
        self.job_name = job_name
        self.error = error


class _Settlement:
    """The core's decisions as Dramatiq's `Retries` middleware understands them."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        raise dramatiq.Retry(delay=millis(delay.total_seconds()))

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        raise JobGaveUp(delivery.job_name, error)

    def defer(self, delivery: Delivery, delay: timedelta) -> None:  # retries untouched
        message = CurrentMessage.get_current_message()
        self.broker.enqueue(message, delay=max(1, millis(delay.total_seconds())))


class JobsMiddleware(Middleware):
    """Reports messages for unknown actors through the core before Dramatiq dead-letters them,
    and hides payloads in the log lines of Dramatiq's threads."""

    def __init__(self, worker: JobWorker[Any]) -> None:
        self.worker = worker

    def after_consumer_thread_boot(self, broker: Broker, thread: Any) -> None:
        hide_payloads(thread.logger)

    after_worker_thread_boot = after_consumer_thread_boot

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self.worker.start_sweeping()  # the waits past their deadline end here too (C42)

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self.worker.close()

    def before_nack(self, broker: Broker, message: Any) -> None:
        if message.actor_name not in broker.actors:
            delivery = Delivery(message.actor_name, None, 0, message.message_id)
            where = f"the dead-letter queue {NAMESPACE}:{message.queue_name}.XQ"
            self.worker.report_unknown(delivery, where=where)


def register_actors(
    registry: JobRegistry[Any],
    *,
    context: ContextSource = None,
    broker: Broker | None = None,
    broker_url: str | None = None,
    instrumentation: Instrumentation | None = None,
    queue: str | None = None,
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT_MS,
    maintenance_chance: int = DEFAULT_MAINTENANCE_CHANCE,
) -> Broker:
    """Declare one Dramatiq actor per job of `registry` and return the broker.

    Without `broker=`, one for `broker_url` (default `JOBS_BROKER_URL`) is made with
    `make_worker_broker` and set as Dramatiq's global broker, so that `dramatiq module` works
    with a module that calls this at import. `queue` defaults to `JOBS_QUEUE`; `context` is a
    ctx object or a sync or async factory called for each run.
    """
    require_context(registry, context, "context= to register_actors")
    if broker is None or queue is None:
        settings = load_settings()
        queue = queue or settings.queue
        if broker is None:
            broker = make_worker_broker(
                broker_url or settings.broker_url,
                heartbeat_timeout=heartbeat_timeout,
                maintenance_chance=maintenance_chance,
            )
            dramatiq.set_broker(broker)
    if not any(isinstance(m, CurrentMessage) for m in broker.middleware):
        broker.add_middleware(CurrentMessage())
    client = broker.client if isinstance(broker, RedisBroker) else None
    store = step_store_for(registry, BACKEND, broker_url=broker_url, client=client)  # C28
    retention = load_settings().step_retention
    worker = JobWorker(
        registry,
        context=context,
        backend=BACKEND,
        instrumentation=instrumentation,
        steps=StepsSetup(store, retention=retention) if store else None,
    )
    worker.flow = redis_flow_limiter(registry, BACKEND, broker_url=broker_url, client=client)

    @functools.lru_cache(maxsize=1)
    def outbound() -> DramatiqDispatcher:  # JOB_FAILED: through this broker, made when needed
        url = load_settings().idempotency_url
        return DramatiqDispatcher(None, queue, broker=broker, idempotency_url=url)

    worker.outbound = outbound
    if not any(isinstance(m, JobsMiddleware) for m in broker.middleware):
        broker.add_middleware(JobsMiddleware(worker))
    if isinstance(broker, WorkerRedisBroker):
        broker.worker = worker  # reports what it cannot decode
    hide_payloads(logging.getLogger("dramatiq.worker.WorkerThread"))
    quiet_message_logs()
    settlement = _Settlement(broker)
    for job in registry:
        worker.check(job, settlement)
        dramatiq.actor(
            actor_name=job.name,
            queue_name=queue,
            broker=broker,
            max_retries=job.retry.attempts,
            min_backoff=millis(job.retry.min_backoff.total_seconds()),
            max_backoff=millis(job.retry.max_backoff.total_seconds()),
            throws=(JobGaveUp,),
        )(_actor_body(job, worker, settlement))
    registry.built_into("the Dramatiq actors of register_actors")
    return broker


def _actor_body(job: Job[Any, Any], worker: JobWorker[Any], settlement: _Settlement) -> Any:
    def run(*args: Any, **kwargs: Any) -> None:
        message = CurrentMessage.get_current_message()  # None when called outside a worker
        attempt = int(message.options.get("retries", 0)) if message is not None else 0
        dispatch_id = message.message_id if message is not None else None
        delivery = delivery_from_call(
            job.name, args, kwargs, attempt=attempt, dispatch_id=dispatch_id
        )
        if hooks.HOOKS and message is not None:  # what hooks (tracing) sent with the job
            traced = carried(message.options.get(HEADERS_KEY))
            delivery = dataclasses.replace(delivery, headers=traced)
        worker.run(delivery, settlement, job)

    run.__name__ = run.__qualname__ = f"job_{job.name}"
    return run


COMMAND_BROKER = f"{__name__}:command_broker"
"""What `run_worker` has the `dramatiq` command load in each of its processes."""
HEARTBEAT_VARIABLE = "JOBS_DRAMATIQ_HEARTBEAT_TIMEOUT"
MAINTENANCE_VARIABLE = "JOBS_DRAMATIQ_MAINTENANCE_CHANCE"
"""How `run_worker` hands its options to `command_broker` in the `dramatiq` processes."""


def command_broker() -> Broker:
    """Set up the worker broker for the `dramatiq` command (it calls this in each process)."""
    if os.environ.get("DJANGO_SETTINGS_MODULE"):  # a Django project's jobs may use its models
        import django

        django.setup()
    settings = load_settings()
    if settings.registry is None:
        raise JobConfigError("JOBS_REGISTRY is not set: the registry to run, as 'module:attribute'")
    registry = load_registry(settings.registry)
    made = register_actors(
        registry,
        context=load_context(settings.context),
        heartbeat_timeout=int(os.environ[HEARTBEAT_VARIABLE]),
        maintenance_chance=int(os.environ[MAINTENANCE_VARIABLE]),
    )
    logger.info(
        "jobs_core: %d job(s) on queue %r at %s",
        len(registry),
        settings.queue,
        settings.redacted_broker_url,
    )
    return made


def run_worker(
    registry: JobRegistry[Any],
    *,
    context: ContextSource,
    settings: JobsSettings,
    argv: list[str],
) -> int:
    """Run the `dramatiq` command for `registry` (`python -m jobs_core worker`); never returns.

    jobs_core's own options: `--queue`, `--heartbeat-timeout MS`, `--maintenance-chance N`
    (per million), `--worker-timeout MS` (idle poll interval: delayed jobs and retries may
    start up to this much late). Everything else goes to `dramatiq` (`--processes`, default 1
    here; `--threads`, default 8; `--worker-shutdown-timeout` ...).
    """
    registry_path, context_path = settings.registry, settings.context
    if registry_path is None:
        raise JobConfigError("the dramatiq worker needs the registry as 'module:attribute'")
    parser = argparse.ArgumentParser(prog="python -m jobs_core worker (dramatiq)", add_help=False)
    parser.add_argument("--queue")
    parser.add_argument("--heartbeat-timeout", type=int, default=DEFAULT_HEARTBEAT_TIMEOUT_MS)
    parser.add_argument("--maintenance-chance", type=int, default=DEFAULT_MAINTENANCE_CHANCE)
    parser.add_argument("--worker-timeout", type=int)
    ours, rest = parser.parse_known_args(argv)
    env = {
        **os.environ,
        "JOBS_QUEUE": ours.queue or settings.queue,
        "JOBS_REGISTRY": registry_path,
        "JOBS_CONTEXT": context_path or "",
        HEARTBEAT_VARIABLE: str(ours.heartbeat_timeout),
        MAINTENANCE_VARIABLE: str(ours.maintenance_chance),
    }
    if ours.worker_timeout is not None:
        env["dramatiq_worker_timeout"] = str(ours.worker_timeout)
    command = [sys.executable, "-m", "dramatiq", COMMAND_BROKER, "-p", "1", "-t", "8", *rest]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)
