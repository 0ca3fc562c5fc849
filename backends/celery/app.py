"""The Celery worker app: one task per job, each delivery run through the core's worker.

`create_celery_app(registry, context=...)` makes the app `celery -A module:app worker` runs. The
core decides how a run ended; this module carries it out the Celery way: a retry is
`Task.retry` with the core's countdown, a give-up re-raises (the task fails and is acked), a run
waiting for its flow-control turn is sent on again as the same attempt. Unknown and malformed
messages are reported through the core and kept in `<queue>.dead`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from datetime import timedelta
from typing import Any

from celery import Celery, bootsteps, signals
from celery.exceptions import Ignore, Reject, Retry
from celery.worker.consumer.tasks import Tasks

from jobs_core import hooks
from jobs_core.backend import require_context
from jobs_core.config import load_settings, redact_url
from jobs_core.errors import JobConfigError
from jobs_core.flow.redis_limiter import redis_flow_limiter
from jobs_core.hooks import HEADERS_KEY, carried
from jobs_core.instrumentation import Instrumentation
from jobs_core.jobs.job import Job
from jobs_core.jobs.registry import JobRegistry
from jobs_core.steps.stores import step_store_for
from jobs_core.worker import ContextSource, Delivery, JobWorker, StepsSetup, delivery_from_call

from .broker import (
    DEFAULT_DELIVERY_LIMIT,
    DEFAULT_VISIBILITY_TIMEOUT,
    celery_conf,
    dead_letter_entity,
    dead_letter_queue,
    is_amqp,
    is_redis,
    longest_hold,
)
from .dispatcher import MESSAGE_OPTIONS, CeleryDispatcher
from .fixes import (
    CONSUMER,
    PATIENT_PUBLISH,
    REDIS_TRANSPORT,
    STRATEGY,
    retry_patiently,
    use_transport,
)

BACKEND = "celery"
HIDDEN_ARGS = {k: MESSAGE_OPTIONS[k] for k in ("argsrepr", "kwargsrepr")}
"""What Celery logs of a re-sent message's arguments (a retry, a deferral): not the payload
(C23), as for a dispatched one."""
TRANSPORTS = ("kombu", "reliable-redis")
"""`transport=` of `create_celery_app` (`JOBS_CELERY_TRANSPORT`): kombu's own, or the opt-in
reliable Redis transport (`jobs_core.backends.celery.reliable_redis`)."""

logger = logging.getLogger("jobs_core.celery")

STOCK_REDIS_WARNING = (
    "Celery on Redis with kombu's own transport (%s, queue %r): a job is lost if its worker "
    "dies between taking it and recording it as unacknowledged (kombu#305), and a killed "
    "worker's jobs come back only after the visibility timeout (%.0f s). For no loss, use "
    "RabbitMQ (JOBS_BROKER_URL=amqp://...) or opt in to the reliable Redis transport "
    "(pip install 'jobs-core[celery-reliable-redis]', JOBS_CELERY_TRANSPORT=reliable-redis): "
    "docs/reliability-celery.md"
)


class _Settlement:
    """The core's decisions as Celery understands them, for one job's task."""

    def __init__(self, job: Job[Any, Any], queue: str, max_hold: float) -> None:
        self.job = job
        self.queue = queue
        self.max_hold = max_hold
        self.task: Any = None

    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        retry_patiently(
            self.task,
            (delivery.data,),
            {},
            countdown=delay.total_seconds(),
            max_retries=self.job.retry.attempts,
            queue=self.queue,
            **HIDDEN_ARGS,
        )

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        # Re-raised, the task ends as FAILURE and is acked. Celery would take these three as
        # control flow (drop or requeue the message), never as a failure.
        if isinstance(error, (Ignore, Reject, Retry)):
            raise RuntimeError(f"job {self.job.name!r} gave up: {error!r}") from error
        raise error

    def defer(self, delivery: Delivery, delay: timedelta) -> None:
        """Send the message on again as the same attempt (its flow-control turn; a run with
        steps going on), no later than the broker holds a delay: a longer wait hops."""
        task = self.task
        countdown = min(max(delay.total_seconds(), 0.0), self.max_hold)
        task.signature_from_request(
            task.request,
            (delivery.data,),
            {},
            countdown=countdown,
            retries=task.request.retries,
            queue=self.queue,
            **HIDDEN_ARGS,
        ).apply_async(retry_policy=PATIENT_PUBLISH)


def _register_job(
    app: Any, job: Job[Any, Any], worker: JobWorker[Any], queue: str, max_hold: float
) -> None:
    settlement = _Settlement(job, queue, max_hold)
    worker.check(job, settlement)  # what this worker cannot do with the job is refused now: C28

    def run(self: Any, *args: Any, **kwargs: Any) -> None:
        request = self.request
        delivery = delivery_from_call(
            job.name, args, kwargs, attempt=request.retries, dispatch_id=request.id
        )
        if hooks.HOOKS:  # what hooks (tracing) sent with the job, kept by Celery's retries
            custom = request.headers or {}
            traced = carried(custom.get(HEADERS_KEY) or getattr(request, HEADERS_KEY, None))
            delivery = dataclasses.replace(delivery, headers=traced)
        worker.run(delivery, settlement, job)

    run.__name__ = run.__qualname__ = "job_" + "".join(c if c.isalnum() else "_" for c in job.name)
    run.__module__ = __name__
    settlement.task = app.task(
        name=job.name,
        bind=True,
        max_retries=job.retry.attempts,  # acks_late etc. come from the app's conf
        typing=False,
        Strategy=STRATEGY,
        shared=False,  # else every Celery app made later in this process gets this task
    )(run)


def _keep(app: Any, message: Any, dead: Any) -> None:
    """Republish `message` as it came to the dead-letter queue `dead`, for an operator."""
    try:
        as_it_came = {"headers": message.headers, "content_type": message.content_type}
        as_it_came["content_encoding"] = message.content_encoding
        with app.producer_or_acquire() as producer:
            producer.publish(
                message.body,
                exchange="",
                routing_key=dead.name,
                declare=[dead],
                retry=True,
                retry_policy={"max_retries": 5, "interval_start": 0.1},
                **as_it_came,
            )
    except Exception:
        logger.exception("could not keep a message in %s", dead.name)


def _connect_keepers(app: Any, worker: JobWorker[Any], dead: Any, amqp: bool) -> None:
    """Report unknown and malformed messages through the core, and keep them in `<q>.dead`:
    on Redis by republishing them there; RabbitMQ dead-letters what Celery rejects itself."""

    def keep(message: Any) -> None:
        if not amqp:
            _keep(app, message, dead)

    def on_unknown(sender: Any = None, message: Any = None, name: str = "", **kw: Any) -> None:
        if message is not None and getattr(sender, "app", None) is app:
            worker.report_unknown(Delivery(name, None, 0, kw.get("id")), where=dead.name)
            keep(message)

    def on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
        if message is not None and getattr(sender, "app", None) is app:
            headers = message.headers if isinstance(message.headers, dict) else {}
            reason = str(exc) if exc is not None else "not a task message"
            size = len(message.body or b"")
            ids = {"message_id": headers.get("id"), "job_name": headers.get("task")}
            worker.report_malformed(size=size, where=dead.name, error=reason, **ids)
            keep(message)

    app.jobs_core_unknown_receiver = on_unknown  # signals hold their receivers weakly
    app.jobs_core_rejected_receiver = on_rejected
    signals.task_unknown.connect(on_unknown, weak=True)
    signals.task_rejected.connect(on_rejected, weak=True)


class DeclareDeadLetters(bootsteps.StartStopStep):  # type: ignore[misc]
    """Declares the queue's dead-letter queue when the worker connects (RabbitMQ drops what it
    dead-letters into an exchange without a queue), says once what the broker can lose, and
    ends timed-out waits while the worker runs."""

    requires = (Tasks,)

    def start(self, c: Any) -> None:
        c.app.jobs_core_worker.start_sweeping()  # the waits past their deadline end (C42)
        dead = c.app.jobs_core_dead_letters
        with c.app.connection_for_write() as connection:
            dead.bind(connection.default_channel).declare()
        if not c.app.jobs_core_warned:
            c.app.jobs_core_warned = True
            warning = c.app.jobs_core_warning
            if warning:
                logger.warning(*warning)

    def shutdown(self, c: Any) -> None:
        c.app.jobs_core_worker.close()


def _use_transport(app: Any, transport: str, visibility_timeout: float) -> None:
    conf = app.conf
    url = str(conf.broker_url or "")
    app.jobs_core_warning = None
    if transport == "reliable-redis":
        if not url.startswith(("redis://", "rediss://")):
            raise JobConfigError(
                f"JOBS_CELERY_TRANSPORT=reliable-redis needs a redis:// or rediss:// broker, "
                f"got {redact_url(url)!r}"
            )
        from .reliable_redis import TRANSPORT, check_kombu

        check_kombu()
        use_transport(conf, TRANSPORT)
    elif is_redis(url) and not conf.broker_transport:
        use_transport(conf, REDIS_TRANSPORT)
        queue = conf.task_default_queue
        app.jobs_core_warning = (STOCK_REDIS_WARNING, redact_url(url), queue, visibility_timeout)
    if conf.worker_consumer in (None, "celery.worker.consumer:Consumer"):
        conf.worker_consumer = CONSUMER


def create_celery_app(
    registry: JobRegistry[Any],
    *,
    context: ContextSource = None,
    broker_url: str | None = None,
    instrumentation: Instrumentation | None = None,
    queue: str | None = None,
    visibility_timeout: float | None = None,
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
    transport: str | None = None,
    **celery_conf_overrides: Any,
) -> Any:
    """A Celery app with one task per job of `registry`, for `celery -A module:app worker`.

    `broker_url`, `queue` and `transport` default to `JOBS_BROKER_URL`, `JOBS_QUEUE` and
    `JOBS_CELERY_TRANSPORT` (`kombu`, or the opt-in `reliable-redis`). `visibility_timeout`
    (Redis) and `delivery_limit` (RabbitMQ) must match the producers'. The remaining keyword
    arguments go to `app.conf` last (a `broker_transport_options` dict is merged).
    """
    require_context(registry, context, "context= to create_celery_app")
    settings = load_settings()
    broker_url = broker_url or settings.broker_url
    queue = queue or settings.queue
    transport = transport or settings.celery_transport
    if transport not in TRANSPORTS:
        raise JobConfigError(f"unknown Celery transport {transport!r}: use one of {TRANSPORTS}")
    vt = float(visibility_timeout or DEFAULT_VISIBILITY_TIMEOUT)
    if vt <= 0:
        raise JobConfigError(f"visibility_timeout must be positive, got {visibility_timeout!r}")
    conf = celery_conf(broker_url, queue, visibility_timeout=vt, delivery_limit=delivery_limit)
    extra_transport = celery_conf_overrides.pop("broker_transport_options", None) or {}
    conf["broker_transport_options"].update(extra_transport)
    conf.update(celery_conf_overrides)
    vt = float(conf["broker_transport_options"].get("visibility_timeout", vt))

    app = Celery("jobs_core.worker", set_as_current=False)
    app.conf.update(conf)
    _use_transport(app, transport, vt)
    hold = longest_hold(broker_url, vt)
    store = step_store_for(registry, BACKEND, broker_url=broker_url)  # C28: refused if none
    worker = JobWorker(
        registry,
        context=context,
        backend=BACKEND,
        instrumentation=instrumentation,
        max_retry_wait=hold,
        steps=StepsSetup(store, retention=settings.step_retention) if store else None,
    )
    worker.flow = redis_flow_limiter(registry, BACKEND, broker_url=broker_url)  # C25-C26, C28

    @functools.lru_cache(maxsize=1)
    def outbound() -> CeleryDispatcher:  # JOB_FAILED, made when first needed
        return CeleryDispatcher(
            broker_url,
            queue,
            visibility_timeout=vt,
            delivery_limit=delivery_limit,
            idempotency_url=settings.idempotency_url,
        )

    worker.outbound = outbound
    app.jobs_core_worker = worker
    max_hold = hold.total_seconds() if hold is not None else float("inf")
    for job in registry:
        _register_job(app, job, worker, queue, max_hold)
    dead = dead_letter_entity(queue, broker_url)
    _connect_keepers(app, worker, dead, is_amqp(broker_url))
    app.jobs_core_queue = queue
    app.jobs_core_dead_letters = dead
    app.jobs_core_warned = False
    app.steps["consumer"].add(DeclareDeadLetters)
    if is_amqp(broker_url):
        logger.debug("celery app for %s: quorum queue %r", redact_url(broker_url), queue)
    registry.built_into("the Celery app of create_celery_app")
    return app


__all__ = ["create_celery_app", "dead_letter_queue"]
