"""What each broker needs of Celery, for producers and workers alike.

RabbitMQ (`amqp://`) is Celery's zero-loss broker, configured here as Celery documents it:
a quorum queue (replicated, fsynced before the publisher is told), publisher confirms, late
acknowledgements, `task_reject_on_worker_lost`, prefetch 1, delays held by the broker
(Celery's native delayed delivery, not a worker), and a dead-letter queue that takes a message
once RabbitMQ has delivered it `delivery_limit` times (one that kills its worker every time).

Redis (`redis://`) runs on kombu's own transport. It keeps an unacknowledged message for
`visibility_timeout` and then gives it to another worker, so a worker may hold a message (a
delay, a retry's wait) for less than that: the adapter refuses longer delays and retry waits,
saying so, rather than running a job twice.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kombu.entity import Exchange as _Exchange
from kombu.entity import Queue as _Queue

from jobs_core.errors import JobConfigError

Exchange: Any = _Exchange  # untyped constructors
Queue: Any = _Queue

DEFAULT_VISIBILITY_TIMEOUT = 7200.0
"""Seconds kombu's Redis transport keeps a message unacked before another worker gets it."""

HOLD_FRACTION = 0.9
"""Share of the visibility timeout a delay or a retry's wait may use (the run needs the rest)."""

DEFAULT_DELIVERY_LIMIT = 20
"""Deliveries of one message (RabbitMQ counts every return of an unacked message: a killed
worker, a requeue) before it is dead-lettered: RabbitMQ 4's own default for quorum queues."""

NATIVE_DELAY_LIMIT = timedelta(seconds=2**28 - 1)
"""The longest delay kombu's native delayed delivery can keep in RabbitMQ (28 levels of TTL
queues, in seconds)."""

DEAD_LETTER_SUFFIX = ".dead"


def is_amqp(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://", "unix://"))


def dead_letter_queue(queue: str) -> str:
    """Where messages that cannot run are kept for an operator: the list `<queue>.dead` on
    Redis, the quorum queue `<queue>.dead` on RabbitMQ."""
    return f"{queue}{DEAD_LETTER_SUFFIX}"


def check_delivery_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise JobConfigError(f"delivery_limit must be a positive int, got {limit!r}")
    return limit


def task_queue(queue: str, broker_url: str, delivery_limit: int = DEFAULT_DELIVERY_LIMIT) -> Any:
    """The queue the jobs go to, as producers and workers both declare it (RabbitMQ refuses a
    second declaration with other arguments). On RabbitMQ: a quorum queue behind a topic
    exchange (native delayed delivery needs one), dead-lettering to `<queue>.dead`."""
    if not is_amqp(broker_url):
        return Queue(queue, routing_key=queue)
    return Queue(
        queue,
        Exchange(queue, type="topic", durable=True),
        routing_key=queue,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": dead_letter_queue(queue),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def dead_letter_entity(queue: str, broker_url: str) -> Any:
    """The dead-letter queue of `queue`, declared with what RabbitMQ dead-letters into it."""
    name = dead_letter_queue(queue)
    if not is_amqp(broker_url):
        return Queue(name, routing_key=name)
    return Queue(
        name,
        Exchange(name, type="fanout", durable=True),
        routing_key=name,
        queue_arguments={"x-queue-type": "quorum"},
    )


def longest_hold(broker_url: str, visibility_timeout: float) -> timedelta | None:
    """The longest delay or retry wait the broker keeps for a job: on Redis, 90 % of the
    visibility timeout (a worker holds the message that long); on RabbitMQ, what native
    delayed delivery keeps."""
    if is_amqp(broker_url):
        return NATIVE_DELAY_LIMIT
    return timedelta(seconds=visibility_timeout * HOLD_FRACTION)


def celery_conf(
    broker_url: str,
    queue: str,
    *,
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The Celery configuration of a jobs_core producer or worker on `broker_url`: JSON only,
    late acks, a killed pool process's job requeued, one message prefetched per process, and
    the broker's own settings (above). `timeout` bounds each connect, read and write."""
    transport: dict[str, Any] = {}
    if is_amqp(broker_url):
        transport["confirm_publish"] = True
    else:
        transport["visibility_timeout"] = visibility_timeout
    if timeout is not None:  # Redis (kombu/redis-py) and AMQP (py-amqp) names
        names = ("socket_timeout", "socket_connect_timeout", "read_timeout", "write_timeout")
        transport.update(dict.fromkeys((*names, "connect_timeout"), timeout))
    conf: dict[str, Any] = {
        "broker_url": broker_url,
        "task_default_queue": queue,
        "task_queues": [task_queue(queue, broker_url, check_delivery_limit(delivery_limit))],
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
    if is_amqp(broker_url):
        conf.update(
            task_default_exchange=queue,
            task_default_exchange_type="topic",
            task_default_routing_key=queue,
            task_default_queue_type="quorum",
            broker_native_delayed_delivery_queue_type="quorum",
        )
    return conf
