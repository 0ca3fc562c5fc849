"""Dramatiq brokers as jobs_core's producers and workers need them.

A worker's Redis broker gets jobs_core's crash-safety settings (C20, C21): a dead worker's
messages come back once its heartbeat is `heartbeat_timeout` old, found by maintenance run on
`maintenance_chance` per million commands (Dramatiq's 60 s and 0.1 % left them stranded for
minutes on an idle queue), and it is the `WorkerRedisBroker` of `fixes`.
"""

from __future__ import annotations

import math
from typing import Any

import dramatiq
import redis

from jobs_core.backend import missing_extra
from jobs_core.config import redact_url
from jobs_core.dispatch.idempotency import is_redis_url
from jobs_core.errors import JobConfigError

from .fixes import WorkerRedisBroker

Broker = Any  # dramatiq's brokers: their constructors are untyped
BACKEND = "dramatiq"
NAMESPACE = "dramatiq"

DEFAULT_HEARTBEAT_TIMEOUT_MS = 15_000
"""A worker whose heartbeat is older than this is dead, and Redis broker maintenance requeues
its unacked messages (C20)."""

DEFAULT_MAINTENANCE_CHANCE = 50_000
"""Per million broker commands (5 %): how often a worker's fetch also runs maintenance."""


def amqp_broker(url: str, **options: Any) -> Broker:
    """Dramatiq's RabbitMQ broker for `url`; any URL that is neither Redis nor AMQP is refused."""
    if not url.startswith(("amqp://", "amqps://")):
        raise JobConfigError(
            f"the dramatiq backend needs a redis:// or amqp:// broker URL, got {redact_url(url)!r}"
        )
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError as exc:
        raise missing_extra("dramatiq", "dramatiq", f"{exc.name or 'pika'} (for amqp://)") from exc
    return RabbitmqBroker(url=url, **options)


def millis(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


def make_worker_broker(
    broker_url: str,
    *,
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT_MS,
    maintenance_chance: int = DEFAULT_MAINTENANCE_CHANCE,
    middleware: list[Any] | None = None,
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
    middleware.append(dramatiq.middleware.CurrentMessage())
    if not is_redis_url(broker_url):
        return amqp_broker(broker_url, middleware=middleware)
    timeouts = {"socket_connect_timeout": 10, "socket_timeout": 30, "health_check_interval": 30}
    client = redis.Redis.from_url(broker_url, socket_keepalive=True, **timeouts)
    options = {"heartbeat_timeout": heartbeat_timeout, "maintenance_chance": maintenance_chance}
    return WorkerRedisBroker(client=client, middleware=middleware, **options)


def close_broker(broker: Broker) -> None:
    """Close `broker` and, for Redis, its connection pool."""
    broker.close()
    client = getattr(broker, "client", None)
    if client is not None:
        client.close()
