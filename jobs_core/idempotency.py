"""Idempotency keys (C9): the first dispatch with a key claims it for 24 h; later ones are no-ops.

Keys are scoped by job name, so one key string can serve two different jobs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
KEY_PREFIX = "jobs_core:idem:"


def scoped_key(job_name: str, key: str) -> str:
    return f"{KEY_PREFIX}{job_name}:{key}"


class IdempotencyStore(Protocol):
    """Claims keys before a job is enqueued, and releases them if the enqueue failed."""

    def claim(self, claims: Sequence[tuple[str, str]]) -> list[str | None]:
        """For each (scoped key, dispatch id): None if claimed now, else the earlier dispatch id."""
        ...

    def release(self, keys: Sequence[str]) -> None: ...


class MemoryIdempotencyStore:
    """Keys in this process only: the inline backend's store (and a best-effort local mirror)."""

    def __init__(self, ttl_seconds: float = IDEMPOTENCY_TTL_SECONDS) -> None:
        self.ttl_seconds = ttl_seconds
        self._keys: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def claim(self, claims: Sequence[tuple[str, str]]) -> list[str | None]:
        now = time.monotonic()
        results: list[str | None] = []
        with self._lock:
            for key, dispatch_id in claims:
                held = self._keys.get(key)
                if held is not None and held[1] > now:
                    results.append(held[0])
                else:
                    self._keys[key] = (dispatch_id, now + self.ttl_seconds)
                    results.append(None)
            if len(self._keys) > 10_000:
                self._keys = {k: v for k, v in self._keys.items() if v[1] > now}
        return results

    def release(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)


class RedisIdempotencyStore:
    """Keys in Redis with `SET NX EX`, shared by every producer (Celery and Dramatiq backends).

    `client` is a redis-py `Redis` (duck-typed: jobs_core does not import redis). All claims of
    one dispatch call go in one pipeline round trip.
    """

    def __init__(self, client: Any, ttl_seconds: int = IDEMPOTENCY_TTL_SECONDS) -> None:
        self.client = client
        self.ttl_seconds = ttl_seconds

    def claim(self, claims: Sequence[tuple[str, str]]) -> list[str | None]:
        if not claims:
            return []
        pipe = self.client.pipeline(transaction=False)
        for key, dispatch_id in claims:
            pipe.set(key, dispatch_id, nx=True, ex=self.ttl_seconds)
            pipe.get(key)
        replies = pipe.execute()
        results: list[str | None] = []
        for i in range(len(claims)):
            was_set, current = replies[2 * i], replies[2 * i + 1]
            if was_set:
                results.append(None)
            else:
                results.append(current.decode() if isinstance(current, bytes) else str(current))
        return results

    def release(self, keys: Sequence[str]) -> None:
        if keys:
            self.client.delete(*keys)
