"""The Dramatiq backend: each job is a Dramatiq actor named after it, run through the core's worker.

A dispatch is a message for that actor (the payload its one argument, the dispatch id its message
id) enqueued with Dramatiq's own `broker.enqueue`. Workers: `broker = register_actors(registry,
context=...)` in a module and `dramatiq that.module`, or `python -m jobs_core worker`.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from jobs_core.config import broker_dispatcher_factory, load_settings, missing_extra, redact_url
from jobs_core.dispatch.dispatcher import AlreadyClaimed, BaseDispatcher, PreparedJob
from jobs_core.dispatch.idempotency import (
    IDEMPOTENCY_TTL_SECONDS,
    IdempotencyStore,
    idempotency_store_for,
    is_redis_url,
    redis_client,
    scoped_key,
)
from jobs_core.errors import JobConfigError
from jobs_core.flow.redis_limiter import redis_flow_limiter
from jobs_core.instrumentation import Instrumentation
from jobs_core.jobs.job import Job
from jobs_core.jobs.registry import JobRegistry
from jobs_core.worker import ContextSource, Delivery, JobWorker, delivery_from_call

try:
    import dramatiq
    import redis
    from dramatiq.brokers.redis import RedisBroker as _RedisBroker
    from dramatiq.common import current_millis, dq_name
    from dramatiq.encoder import JSONEncoder
    from dramatiq.middleware import CurrentMessage, Middleware

    from ._dramatiq_patches import (
        ClaimingDispatch,
        EncodedMessage,
        WorkerRedisBroker,
        hide_payloads,
    )
except ImportError as _exc:  # pragma: no cover - exercised by C24 with the module hidden
    raise missing_extra("dramatiq", "dramatiq", getattr(_exc, "name", None) or str(_exc)) from _exc

Broker = Any  # dramatiq's brokers: their constructors are untyped
RedisBroker: Any = _RedisBroker
BACKEND = "dramatiq"
NAMESPACE = "dramatiq"

DEFAULT_HEARTBEAT_TIMEOUT_MS = 15_000
"""A worker whose heartbeat is older than this is dead, and Redis broker maintenance requeues
its unacked messages (C20). Dramatiq's 60 s and 0.1 % maintenance chance left them stranded for
minutes on an idle queue."""

DEFAULT_MAINTENANCE_CHANCE = 50_000
"""Per million broker commands (5 %): how often a worker's fetch also runs maintenance."""

logger = logging.getLogger("jobs_core.backends.dramatiq")


class JobGaveUp(Exception):
    """Raised by an actor when the core gave up on a job: listed in `throws=`, so Dramatiq
    dead-letters the message without retrying it (`on_failure` already ran, in the core)."""

    def __init__(self, job_name: str, error: BaseException | None) -> None:
        super().__init__(f"job {job_name!r} gave up: {type(error).__name__}: {error}")
        self.job_name = job_name
        self.error = error


def _amqp_broker(url: str, **options: Any) -> Broker:
    if not url.startswith(("amqp://", "amqps://")):
        raise JobConfigError(
            f"the dramatiq backend needs a redis:// or amqp:// broker URL, got {redact_url(url)!r}"
        )
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError as exc:
        raise missing_extra("dramatiq", "dramatiq", f"{exc.name or 'pika'} (for amqp://)") from exc
    return RabbitmqBroker(url=url, **options)


def _millis(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


# -- producer -----------------------------------------------------------------------------


class DramatiqDispatcher(BaseDispatcher):
    """Sends jobs to Dramatiq workers through the broker at `broker_url`, on `queue`."""

    backend_name = BACKEND

    def __init__(
        self,
        broker_url: str,
        queue: str = "default",
        *,
        idempotency: IdempotencyStore | None = None,
        idempotency_url: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(idempotency=idempotency, **options)
        self.broker_url = broker_url
        self.queue = queue
        self.client: redis.Redis | None = None
        self.script: ClaimingDispatch | None = None
        if is_redis_url(broker_url):
            self.client = redis_client(broker_url, self.timeout)
            self.broker = RedisBroker(client=self.client, middleware=[], maintenance_chance=0)
            if idempotency is None and idempotency_url is None:  # keys live beside the queue
                self.script = ClaimingDispatch(self.broker, IDEMPOTENCY_TTL_SECONDS)
                self.broker.scripts["dispatch"] = self.script
                self.claims_when_sending = True
        else:
            self.broker = _amqp_broker(broker_url, middleware=[])
        self.broker.declare_queue(queue)
        if idempotency is None:
            shared = self.client if idempotency_url is None else None
            url = idempotency_url or broker_url
            self.idempotency = idempotency_store_for(url, self.timeout, what=BACKEND, client=shared)

    def _message(
        self, prepared: PreparedJob, queue: str, options: dict[str, Any]
    ) -> dramatiq.Message[Any]:
        fields: dict[str, Any] = {"queue_name": queue, "actor_name": prepared.name}
        fields.update(kwargs={}, options=options, message_id=prepared.dispatch_id)
        if type(dramatiq.get_encoder()) is JSONEncoder:  # the payload's JSON goes in as it is
            return EncodedMessage(args=(), body=prepared.body, **fields)
        return dramatiq.Message(args=(prepared.data,), **fields)

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str | AlreadyClaimed]:
        if len(jobs) > 1 and self.client is not None:
            return self._send_in_one_transaction(jobs)
        results: list[str | AlreadyClaimed] = []
        for prepared in jobs:
            wait = prepared.delay_seconds()
            self._claim_with(prepared)
            message = self._message(prepared, self.queue, {})
            self.broker.enqueue(message, delay=_millis(wait) if wait > 0 else None)
            held = self.script.held if self.script is not None else None
            results.append(AlreadyClaimed(held) if held else prepared.dispatch_id)
        return results

    def _claim_with(self, prepared: PreparedJob) -> None:
        """Have the next enqueue claim `prepared`'s idempotency key in the same script run."""
        if self.script is not None:
            key = prepared.idempotency_key
            claim = (scoped_key(prepared.name, key), prepared.dispatch_id) if key else None
            self.script.claim = claim

    def _send_in_one_transaction(self, jobs: Sequence[PreparedJob]) -> list[str | AlreadyClaimed]:
        """Dramatiq's own enqueue script, the call its `enqueue` ends in, on a broker whose client
        is a Redis transaction: the calls (claiming keys as they enqueue) go to Redis in one
        round trip, all or none. Each message is made once, as `enqueue` would leave it."""
        assert self.client is not None
        pipe = self.client.pipeline(transaction=True)
        batch = RedisBroker(client=pipe, middleware=[], maintenance_chance=0)
        batch.broker_id = self.broker.broker_id  # one producer in the heartbeats, not one a batch
        batch.scripts["maxstack"] = self.broker.scripts["maxstack"]  # a query, not a write
        if self.script is not None:
            batch.scripts["dispatch"] = functools.partial(self.script, client=pipe)
        enqueue = batch.do_enqueue
        for prepared in jobs:
            queue, wait = self.queue, prepared.delay_seconds()
            options: dict[str, Any] = {"redis_message_id": secrets.token_hex(16)}
            if wait > 0:
                options["eta"], queue = current_millis() + _millis(wait), dq_name(queue)
            self._claim_with(prepared)
            message = self._message(prepared, queue, options)
            enqueue(queue, options["redis_message_id"], message.encode())
        replies = pipe.execute()
        return [
            AlreadyClaimed(reply.decode()) if isinstance(reply, bytes) else p.dispatch_id
            for p, reply in zip(jobs, replies)
        ]

    def close(self) -> None:
        self.broker.close()
        super().close()

    def __repr__(self) -> str:
        url = redact_url(self.broker_url)
        return f"DramatiqDispatcher(broker_url={url!r}, queue={self.queue!r})"


create_dispatcher = broker_dispatcher_factory(DramatiqDispatcher, BACKEND)


# -- worker -------------------------------------------------------------------------------


class _Settlement:
    """The core's decisions as Dramatiq's `Retries` middleware understands them."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        raise dramatiq.Retry(delay=_millis(delay.total_seconds()))

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        raise JobGaveUp(delivery.job_name, error)

    def defer(self, delivery: Delivery, delay: timedelta) -> None:  # retries untouched
        message = CurrentMessage.get_current_message()
        self.broker.enqueue(message, delay=max(1, _millis(delay.total_seconds())))


class JobsMiddleware(Middleware):
    """Reports messages for unknown actors through the core before Dramatiq dead-letters them,
    and hides payloads in the log lines of Dramatiq's threads."""

    def __init__(self, worker: JobWorker[Any]) -> None:
        self.worker = worker

    def after_consumer_thread_boot(self, broker: Broker, thread: Any) -> None:
        hide_payloads(thread.logger)

    after_worker_thread_boot = after_consumer_thread_boot

    def before_nack(self, broker: Broker, message: Any) -> None:
        if message.actor_name not in broker.actors:
            delivery = Delivery(message.actor_name, None, 0, message.message_id)
            where = f"the dead-letter queue {NAMESPACE}:{message.queue_name}.XQ"
            self.worker.report_unknown(delivery, where=where)


def make_worker_broker(
    broker_url: str,
    *,
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT_MS,
    maintenance_chance: int = DEFAULT_MAINTENANCE_CHANCE,
    middleware: list[Middleware] | None = None,
) -> Broker:
    """A worker broker for `broker_url` with jobs_core's crash-safety settings (C20, C21).

    Redis: `heartbeat_timeout` (ms) and `maintenance_chance` (per million commands) bound how
    soon a dead worker's messages come back; connecting times out after 10 s and a reply after
    30 s (fetches never block in Redis), so a hanging broker is noticed. The middleware is
    Dramatiq's default minus `TimeLimit`, plus `CurrentMessage`.
    """
    if middleware is None:
        defaults = dramatiq.middleware.default_middleware
        middleware = [m() for m in defaults if m is not dramatiq.middleware.TimeLimit]
    middleware.append(CurrentMessage())
    if not is_redis_url(broker_url):
        return _amqp_broker(broker_url, middleware=middleware)
    timeouts = {"socket_connect_timeout": 10, "socket_timeout": 30, "health_check_interval": 30}
    client = redis.Redis.from_url(broker_url, socket_keepalive=True, **timeouts)
    options = {"heartbeat_timeout": heartbeat_timeout, "maintenance_chance": maintenance_chance}
    return WorkerRedisBroker(client=client, middleware=middleware, **options)


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
    worker = JobWorker(registry, context=context, backend=BACKEND, instrumentation=instrumentation)
    client = broker.client if isinstance(broker, _RedisBroker) else None
    worker.flow = redis_flow_limiter(registry, BACKEND, broker_url=broker_url, client=client)
    if not any(isinstance(m, JobsMiddleware) for m in broker.middleware):
        broker.add_middleware(JobsMiddleware(worker))
    if isinstance(broker, WorkerRedisBroker):
        broker.worker = worker  # reports what it cannot decode
    hide_payloads(logging.getLogger("dramatiq.worker.WorkerThread"))
    settlement = _Settlement(broker)
    for job in registry:
        worker.check(job, settlement)
        dramatiq.actor(
            actor_name=job.name,
            queue_name=queue,
            broker=broker,
            max_retries=job.retry.attempts,
            min_backoff=_millis(job.retry.min_backoff.total_seconds()),
            max_backoff=_millis(job.retry.max_backoff.total_seconds()),
            throws=(JobGaveUp,),
        )(_actor_body(job, worker, settlement))
    return broker


def _actor_body(job: Job[Any, Any], worker: JobWorker[Any], settlement: _Settlement) -> Any:
    def run(*args: Any, **kwargs: Any) -> None:
        message = CurrentMessage.get_current_message()  # None when called outside a worker
        attempt = int(message.options.get("retries", 0)) if message is not None else 0
        dispatch_id = message.message_id if message is not None else None
        delivery = delivery_from_call(
            job.name, args, kwargs, attempt=attempt, dispatch_id=dispatch_id
        )
        worker.run(delivery, settlement, job)

    run.__name__ = run.__qualname__ = f"job_{job.name}"
    return run


def close_broker(broker: Broker) -> None:
    """Close `broker` and, for Redis, its connection pool."""
    broker.close()
    client = getattr(broker, "client", None)
    if client is not None:
        client.close()


def run_worker(registry: JobRegistry[Any], **options: Any) -> int:
    """Run the `dramatiq` command for `registry` (`python -m jobs_core worker`); see
    `_dramatiq_bootstrap.run_worker` for its options."""
    from ._dramatiq_bootstrap import run_worker as run_dramatiq

    return run_dramatiq(registry, **options)
