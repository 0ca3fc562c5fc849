"""Fixes for Celery 5 and kombu 5 behaviours that would lose or stall a job, each through a hook
Celery documents (`worker_consumer`, a task's `Strategy`, `Task.retry`'s `retry_policy`,
`broker_transport`) and each with a test that fails without it.

1. **Bodies Celery cannot decode** (celery/celery#4308). A message without a `task` header
   whose body cannot be decoded was logged and acked: gone. `Consumer.on_decode_error` rejects
   it and announces it with `task_rejected`, as Celery does for any other malformed message;
   the adapter keeps it in `<queue>.dead`. Test: tests/poison (`undecodable-body`).
2. **Malformed task bodies** (Celery's default task strategy). A body of the wrong shape (not
   `[args, kwargs, embed]`) raised `ValueError` out of the consumer loop ("Unrecoverable
   error": the worker stopped, and every worker that fetched it again); one that is not JSON was
   acked and dropped. `malformed_messages_are_invalid` makes both an `InvalidTaskError`, which
   Celery rejects and announces. Test: tests/poison (`not-json`, `wrong-shape`).
3. **A retry sent while the broker is away** (`Task.retry`). A retry is a new message published
   before the old one is acked; when that publish failed, Celery gave up after its default
   policy's 0.6 s and raised `Reject(requeue=False)`: the job was dropped. `retry_patiently`
   waits `BROKER_AWAY_SECONDS` for the broker, then requeues the old message rather than drop
   it. Test: tests/celery/test_durability.py `test_C21_a_retry_sent_while_the_broker_is_away...`.
4. **Closing a collected Redis connection** (kombu; the `AttributeError` of celery/kombu#582).
   On a lost connection Celery's consumer `collect()`s the connection (clearing the transport's
   `client`) and then closes it; the close restores unacked messages through `_connparams()`,
   which read `transport.client.hostname`: an `AttributeError`, not a connection error, so the
   worker stopped instead of reconnecting (3 of 6 Redis restarts). `RedisChannel` keeps the
   parameters it last built. Test: tests/celery/test_fixes.py.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from typing import Any

import redis
from celery.exceptions import InvalidTaskError, Reject
from celery.worker.consumer import consumer as _celery_consumer
from kombu.exceptions import DecodeError
from kombu.transport import redis as _kombu_redis

from jobs_core.worker import BROKER_AWAY_SECONDS

logger = logging.getLogger("jobs_core.celery")

# The upstream classes the fixes below subclass (untyped upstream, so typed Any here).
UpstreamConsumer: Any = _celery_consumer.Consumer
UpstreamRedisChannel: Any = _kombu_redis.Channel
UpstreamRedisTransport: Any = _kombu_redis.Transport

CONSUMER = f"{__name__}:Consumer"
"""`worker_consumer`: Celery's consumer with fix 1."""

REDIS_TRANSPORT = f"{__name__}:RedisTransport"
"""`broker_transport` of a worker on Redis: kombu's transport with fix 4."""

STRATEGY = f"{__name__}:malformed_messages_are_invalid"
"""The `Strategy=` option of a job's task (fix 2)."""


class Consumer(UpstreamConsumer):  # type: ignore[misc]
    """Celery's consumer: undecodable bodies rejected and announced instead of acked (fix 1);
    every malformed message logged with what finds it again."""

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        _log_malformed(message, "whose body cannot be decoded", exc)
        self.on_invalid_task(None, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _log_malformed(message, "that is not a task message (no task name)", None)
        super().on_unknown_message(body, message)


def _log_malformed(message: Any, what: str, exc: BaseException | None) -> None:
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    properties = message.properties or {}
    logger.error(
        "message on queue %r %s (message id %s, correlation id %s, %d bytes, sha256 %s): "
        "not run; rejected and kept in the dead letters%s",
        (message.delivery_info or {}).get("routing_key"),
        what,
        properties.get("message_id"),
        properties.get("correlation_id"),
        len(body),
        hashlib.sha256(body).hexdigest(),
        f": {type(exc).__name__}: {str(exc)[:200]}" if exc is not None else "",
    )


MALFORMED_MESSAGE_ERRORS: tuple[type[BaseException], ...] = (
    DecodeError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
)
"""What Celery's consumer raises while reading a malformed message, before any run."""


def malformed_messages_are_invalid(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """Celery's default task strategy, with a malformed message made an `InvalidTaskError`
    (fix 2): Celery logs it, rejects it without a retry and sends `task_rejected`."""
    from celery.worker.strategy import default  # worker side only

    handle = default(task, app, consumer, **options)

    def task_message_handler(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return handle(message, body, *args, **kwargs)
        except InvalidTaskError:
            raise
        except MALFORMED_MESSAGE_ERRORS as exc:
            headers = getattr(message, "headers", None) or {}
            raise InvalidTaskError(
                f"malformed message for job {task.name!r} (task id {headers.get('id')}): "
                f"{type(exc).__name__}: {str(exc)[:200]}"
            ) from exc

    return task_message_handler


PATIENT_PUBLISH = {
    "max_retries": int(BROKER_AWAY_SECONDS / 2),
    "interval_start": 0.5,
    "interval_step": 0.5,
    "interval_max": 2,
}
"""A worker's retry or resend waits `BROKER_AWAY_SECONDS` for the broker (2 s between tries)."""


def retry_patiently(task: Any, args: Any, kwargs: Any, **options: Any) -> None:
    """`task.retry(args, kwargs, **options)`, waiting for a broker that is away (fix 3)."""
    try:
        raise task.retry(args, kwargs, retry_policy=PATIENT_PUBLISH, **options)
    except Reject as dropped:  # still away: put the message back rather than drop it
        raise Reject(dropped.reason, requeue=True) from dropped


class RedisChannel(UpstreamRedisChannel):  # type: ignore[misc]
    """kombu's Redis channel; a collected connection is a lost connection (fix 4)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._saved_connparams: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is None or transport.client is None:
            saved = self._saved_connparams.get(asynchronous)
            if saved is None:
                raise redis.exceptions.ConnectionError("the broker connection was closed")
            return dict(saved)
        params: dict[str, Any] = super()._connparams(asynchronous)
        self._saved_connparams[asynchronous] = dict(params)
        return params


class RedisTransport(UpstreamRedisTransport):  # type: ignore[misc]
    """kombu's Redis transport with `RedisChannel` (`broker_transport` = `REDIS_TRANSPORT`)."""

    Channel = RedisChannel


def use_transport(conf: Any, transport: str) -> None:
    """Name `transport` as the app's `broker_transport`, with the TLS default kombu gives a
    `rediss://` URL itself (a transport named by class does not get it)."""
    conf.broker_transport = transport
    if str(conf.broker_url or "").startswith("rediss://") and not conf.broker_use_ssl:
        logger.warning("rediss:// broker without broker_use_ssl: certificates are not checked")
        conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_NONE}
