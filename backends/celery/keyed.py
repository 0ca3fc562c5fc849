"""A keyed Celery dispatch on Redis claims its idempotency key and pushes its task in one step.

Claimed in one Redis call and pushed in another, a producer (or outbox relay) killed between the
two would leave the key claimed for a task never sent, and every resend would come back
"deduplicated". `ProducerChannel._put` pushes a keyed task with the script that claims its key.
Test: tests/celery/test_dispatcher.py `test_a_keyed_dispatch_killed_before_its_publish...`.
"""

from __future__ import annotations

import threading
from typing import Any

from kombu.transport import redis as _kombu_redis
from kombu.utils import json as _json

_RedisChannel: Any = _kombu_redis.Channel
_RedisTransport: Any = _kombu_redis.Transport
dumps: Any = _json.dumps

CLAIM_AND_PUSH = """
local held = redis.call("get", KEYS[2])
if held then return held end
redis.call("set", KEYS[2], ARGV[2], "EX", ARGV[3])
redis.call("lpush", KEYS[1], ARGV[1])
return false
"""
"""A keyed message: claim its idempotency key and push it, in one script run, or return the
id that holds the key and push nothing."""

_claims = threading.local()


def claim_on_publish(dispatch_id: str, scoped_key: str, ttl_seconds: int) -> None:
    """Have the next publish of the task `dispatch_id` (in this thread) claim `scoped_key`."""
    _claims.pending = (dispatch_id, scoped_key, ttl_seconds)
    _claims.held = None


def claimed_by() -> str | None:
    """After a claiming publish: the id that already held the key (nothing was pushed)."""
    held: str | None = getattr(_claims, "held", None)
    _claims.pending = _claims.held = None
    return held


class ProducerChannel(_RedisChannel):  # type: ignore[misc]
    """kombu's Redis channel for producers: a keyed task is pushed by the script run that
    claims its idempotency key (`claim_on_publish`)."""

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        pending = getattr(_claims, "pending", None)
        task_id = (message.get("headers") or {}).get("id")
        if pending is None or pending[0] != task_id or (self._expires and queue in self._expires):
            super()._put(queue, message, **kwargs)
            return
        dispatch_id, key, ttl = pending  # kept until claimed_by(): a retried publish claims too
        queue_key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client:
            held = client.eval(CLAIM_AND_PUSH, 2, queue_key, key, dumps(message), dispatch_id, ttl)
        _claims.held = held.decode() if isinstance(held, bytes) else None


class ProducerRedisTransport(_RedisTransport):  # type: ignore[misc]
    """kombu's Redis transport with `ProducerChannel` (`PRODUCER_TRANSPORT`)."""

    Channel = ProducerChannel


PRODUCER_TRANSPORT = f"{__name__}:ProducerRedisTransport"
