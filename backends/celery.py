"""The Celery backend: each job is a Celery task named after it, run through the core's worker.

A dispatch is sent by task name with one JSON argument (the payload) and the dispatch id as task
id. Workers: `create_celery_app(registry, context=...)` and `celery -A module:app worker`, or
`python -m jobs_core worker`. Defaults chosen for durability: JSON only, `task_acks_late`,
`task_reject_on_worker_lost`, `worker_prefetch_multiplier=1`, and on Redis the transport patches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import pydantic_core

from jobs_core.config import broker_dispatcher_factory, load_settings, missing_extra, redact_url
from jobs_core.dispatcher import AlreadyClaimed, BaseDispatcher, PreparedJob
from jobs_core.errors import JobConfigError
from jobs_core.execution import ContextSource
from jobs_core.flow_redis import redis_flow_limiter
from jobs_core.idempotency import (
    IDEMPOTENCY_TTL_SECONDS,
    IdempotencyStore,
    idempotency_store_for,
    is_redis_url,
    scoped_key,
)
from jobs_core.instrumentation import Instrumentation
from jobs_core.job import Job
from jobs_core.payload import PAYLOAD_MASK
from jobs_core.registry import JobRegistry
from jobs_core.worker import Delivery, JobWorker, delivery_from_call

try:
    from celery import Celery, signals
    from celery.exceptions import Ignore, Reject, Retry
    from kombu.entity import Queue as _Queue

    from ._celery_patches import (
        PATIENT_PUBLISH,
        PRODUCER_TRANSPORT,
        STRATEGY,
        claim_on_publish,
        claimed_by,
        holding_limit,
        install_worker_patches,
        retry_patiently,
    )
except ImportError as exc:  # pragma: no cover - exercised by the C24 test
    raise missing_extra("celery", "celery", getattr(exc, "name", None) or "celery") from exc

BACKEND = "celery"
Queue: Any = _Queue  # untyped constructor

DEFAULT_VISIBILITY_TIMEOUT = 7200.0
"""Seconds a message may stay unacked on Redis before a worker without jobs_core's transport
patches (a plain Celery app on the queue) takes it for lost; on RabbitMQ, `holding_limit`."""

MAX_DELAY_FRACTION = 0.9
"""Share of the unacked-hold limit a delay or retry hop may use (the run needs the rest)."""

NOT_BEFORE_KWARG = "jobs_core_not_before"
"""Task kwarg (Unix time) on a retry whose wait is longer than one hop: run no earlier."""

MESSAGE_OPTIONS = {"argsrepr": f"({PAYLOAD_MASK},)", "kwargsrepr": "{}", "ignore_result": True}
"""What Flower and `celery inspect` show of a task's arguments: never the payload (C23)."""

PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
"""One retry after a reconnect: with each attempt bounded by a third of the dispatch timeout,
a dead broker fails within the dispatch timeout (C7)."""

logger = logging.getLogger("jobs_core.celery")


def dead_letter_queue(queue: str) -> str:
    """Where messages a worker cannot run are kept for an operator (a list on Redis)."""
    return f"{queue}.dead"


def _conf(broker_url: str, queue: str, visibility_timeout: float, timeout: float | None) -> Any:
    transport: dict[str, Any] = {"visibility_timeout": visibility_timeout}
    if timeout is not None:  # Redis (kombu/redis-py) and AMQP (py-amqp) names
        names = ("socket_timeout", "socket_connect_timeout", "read_timeout", "write_timeout")
        transport.update(dict.fromkeys((*names, "connect_timeout"), timeout))
    return {
        "broker_url": broker_url,
        "task_default_queue": queue,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "enable_utc": True,
    }


# -- producer -----------------------------------------------------------------------------


class CeleryDispatcher(BaseDispatcher):
    """Sends jobs to Celery workers by task name; `dispatch_many` is one Redis pipeline."""

    backend_name = BACKEND
    max_delay_reason = "90% of the Celery visibility_timeout; raise it on producer and workers"

    def __init__(
        self,
        broker_url: str,
        queue: str = "default",
        *,
        visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
        idempotency: IdempotencyStore | None = None,
        idempotency_url: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(idempotency=idempotency, **options)
        self.broker_url = broker_url
        self.queue = queue
        held_for = holding_limit(broker_url, visibility_timeout)  # RabbitMQ: consumer_timeout
        self.max_delay = timedelta(seconds=held_for * MAX_DELAY_FRACTION)
        if idempotency is None:
            url = idempotency_url or broker_url
            self.idempotency = idempotency_store_for(url, self.timeout, what="celery")
        attempt_timeout = max(self.timeout / 3, 0.05)  # one try, one retry after a reconnect
        self.app = Celery("jobs_core.producer", set_as_current=False)
        self.app.conf.update(
            _conf(broker_url, queue, visibility_timeout, attempt_timeout),
            broker_connection_timeout=attempt_timeout,
            broker_connection_max_retries=1,
            task_publish_retry_policy=dict(PUBLISH_RETRY_POLICY),
        )
        if idempotency is None and idempotency_url is None and is_redis_url(broker_url):
            self.app.conf.broker_transport = PRODUCER_TRANSPORT  # keys claimed as tasks are pushed
            self.claims_when_sending = True

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str | AlreadyClaimed]:
        """Publish through Celery's own message layer (`app.amqp`), as `send_task` does, minus
        routing (the queue is known) and the result object (results are ignored). Several jobs
        go in kombu's `Producer.batch()`: one Redis pipeline, flushed at the end."""
        amqp, queue = self.app.amqp, self.app.amqp.queues[self.queue]
        claims = self.claims_when_sending and any(p.idempotency_key for p in jobs)
        batch = len(jobs) > 1 and not claims  # a keyed job's claim answers as it is pushed
        options: dict[str, Any] = {"retry": False, "declare": []} if batch else {}
        options.update(content_type="application/json", content_encoding="utf-8")  # pre-encoded
        results: list[str | AlreadyClaimed] = []
        with self.app.producer_or_acquire() as producer:
            if batch:
                producer.maybe_declare(queue, retry=True, **PUBLISH_RETRY_POLICY)
            with producer.batch(max_size=len(jobs) + 1) if batch else nullcontext():
                for p in jobs:
                    message = _task_message(amqp, p)
                    if claims and p.idempotency_key:
                        key = scoped_key(p.name, p.idempotency_key)
                        claim_on_publish(p.dispatch_id, key, IDEMPOTENCY_TTL_SECONDS)
                    amqp.send_task_message(producer, p.name, message, queue=queue, **options)
                    held = claimed_by() if claims and p.idempotency_key else None
                    results.append(AlreadyClaimed(held) if held else p.dispatch_id)
        return results

    def close(self) -> None:
        self.app.close()
        super().close()

    def __repr__(self) -> str:
        return f"CeleryDispatcher(broker_url={redact_url(self.broker_url)!r}, queue={self.queue!r})"


def _task_message(amqp: Any, prepared: PreparedJob) -> Any:
    """Celery's task message for `prepared`, its body `[[payload], kwargs, embed]` as JSON bytes
    around the payload's JSON, which the core made once (kombu serialises a body only when it
    is not already bytes with a content type)."""
    message = amqp.create_task_message(
        prepared.dispatch_id, prepared.name, (), {}, eta=prepared.eta, **MESSAGE_OPTIONS
    )
    _, kwargs, embed = message.body
    rest = pydantic_core.to_json([kwargs, embed])[1:]
    return message._replace(body=b"[[" + prepared.body + b"]," + rest)


create_dispatcher = broker_dispatcher_factory(CeleryDispatcher, BACKEND)


# -- worker -------------------------------------------------------------------------------


class _Settlement:
    """The core's decisions as Celery understands them, for one job's task."""

    def __init__(self, job: Job[Any, Any], max_hop: float) -> None:
        self.job = job
        self.max_hop = max_hop
        self.task: Any = None

    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        wait = delay.total_seconds()
        kwargs = {NOT_BEFORE_KWARG: time.time() + wait} if wait > self.max_hop else {}
        hop, attempts = min(wait, self.max_hop), self.job.retry.attempts
        retry_patiently(self.task, (delivery.data,), kwargs, countdown=hop, max_retries=attempts)

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        # Re-raised, the task ends as FAILURE and is acked. Celery would take these three as
        # control flow (drop or requeue the message), never as a failure.
        if isinstance(error, (Ignore, Reject, Retry)):
            raise RuntimeError(f"job {self.job.name!r} gave up: {error!r}") from error
        raise error

    def defer(self, delivery: Delivery, delay: timedelta) -> None:
        """Send the message on again as the same attempt: it waits for its flow-control turn."""
        self.resend(delivery.data, delay.total_seconds(), {})

    def hop(self, data: Any, not_before: float) -> None:
        """Send the message on again, for a wait longer than one visibility window."""
        self.resend(data, not_before - time.time(), {NOT_BEFORE_KWARG: not_before})

    def resend(self, data: Any, wait: float, kwargs: dict[str, Any]) -> None:
        task, countdown = self.task, min(max(wait, 0.0), self.max_hop)
        task.signature_from_request(
            task.request, (data,), kwargs, countdown=countdown, retries=task.request.retries
        ).apply_async(retry_policy=PATIENT_PUBLISH)


def _register_job(app: Any, job: Job[Any, Any], worker: JobWorker[Any], max_hop: float) -> None:
    settlement = _Settlement(job, max_hop)

    def run(self: Any, *args: Any, **kwargs: Any) -> None:
        not_before = kwargs.pop(NOT_BEFORE_KWARG, None)
        if isinstance(not_before, (int, float)) and not_before - time.time() > 0.001:
            settlement.hop(args[0] if len(args) == 1 else list(args), float(not_before))
            return
        request = self.request
        delivery = delivery_from_call(
            job.name, args, kwargs, attempt=request.retries, dispatch_id=request.id
        )
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


def _keep(app: Any, message: Any, queue: str) -> None:
    """Republish `message` as it came to the queue `queue`, for an operator to find."""
    try:
        as_it_came = {"headers": message.headers, "content_type": message.content_type}
        as_it_came["content_encoding"] = message.content_encoding
        with app.producer_or_acquire() as producer:
            producer.publish(
                message.body,
                exchange="",
                routing_key=queue,
                declare=[Queue(queue, routing_key=queue)],  # kept on AMQP too
                retry=True,
                retry_policy={"max_retries": 5, "interval_start": 0.1},
                **as_it_came,
            )
    except Exception:
        logger.exception("could not keep a message in %s", queue)


def _connect_keepers(app: Any, worker: JobWorker[Any], queue: str) -> None:
    """Report unknown and malformed messages through the core, and keep them in `<q>.dead`."""
    dead = dead_letter_queue(queue)

    def on_unknown(sender: Any = None, message: Any = None, name: str = "", **kw: Any) -> None:
        if message is not None and getattr(sender, "app", None) is app:
            worker.report_unknown(Delivery(name, None, 0, kw.get("id")), where=dead)
            _keep(app, message, dead)

    def on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
        if message is not None and getattr(sender, "app", None) is app:
            headers = message.headers if isinstance(message.headers, dict) else {}
            reason = str(exc) if exc is not None else "not a task message"
            size = len(message.body or b"")
            ids = {"message_id": headers.get("id"), "job_name": headers.get("task")}
            worker.report_malformed(size=size, where=dead, error=reason, **ids)
            _keep(app, message, dead)

    app.jobs_core_unknown_receiver = on_unknown  # signals hold their receivers weakly
    app.jobs_core_rejected_receiver = on_rejected
    signals.task_unknown.connect(on_unknown, weak=True)
    signals.task_rejected.connect(on_rejected, weak=True)


def create_celery_app(
    registry: JobRegistry[Any],
    *,
    context: ContextSource = None,
    broker_url: str | None = None,
    instrumentation: Instrumentation | None = None,
    queue: str | None = None,
    visibility_timeout: float | None = None,
    **celery_conf: Any,
) -> Any:
    """A Celery app with one task per job of `registry`, for `celery -A module:app worker`.

    `broker_url` and `queue` default to `JOBS_BROKER_URL` / `JOBS_QUEUE`. `celery_conf` is
    passed to `app.conf` last (a `broker_transport_options` dict is merged, not replaced).
    """
    if broker_url is None or queue is None:
        settings = load_settings()
        broker_url, queue = broker_url or settings.broker_url, queue or settings.queue
    vt = float(visibility_timeout or DEFAULT_VISIBILITY_TIMEOUT)
    if vt <= 0:
        raise JobConfigError(f"visibility_timeout must be positive, got {visibility_timeout!r}")
    conf = _conf(broker_url, queue, vt, None)
    conf["broker_transport_options"].update(celery_conf.pop("broker_transport_options", None) or {})
    conf.update(celery_conf)
    vt = float(conf["broker_transport_options"].get("visibility_timeout", vt))
    vt = holding_limit(broker_url, vt)  # RabbitMQ: consumer_timeout

    app = Celery("jobs_core.worker", set_as_current=False)
    app.conf.update(conf)
    install_worker_patches(app)  # once its configuration is final
    worker = JobWorker(registry, context=context, backend=BACKEND, instrumentation=instrumentation)
    worker.flow = redis_flow_limiter(registry, BACKEND, broker_url=broker_url)  # C25-C26, C28
    for job in registry:
        _register_job(app, job, worker, max_hop=max(vt * MAX_DELAY_FRACTION, 0.001))
    _connect_keepers(app, worker, queue)
    app.jobs_core_queue = queue
    return app


def run_worker(registry: JobRegistry[Any], **options: Any) -> int:
    """Run a Celery worker for `registry` in the foreground (`python -m jobs_core worker`); see
    `_celery_worker.run_worker` for its options."""
    from ._celery_worker import run_worker as run_celery

    return run_celery(registry, **options)
