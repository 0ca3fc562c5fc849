"""Idempotency (C9, C27): the first dispatch with a key claims it for 24 h; later ones are no-ops.

A key is given at dispatch (`idempotency_key=`) or derived from the payload by the job's
`idempotency=` rule (a field's name, or a callable of the payload); the explicit one wins.
Keys are scoped by job name, so one key string can serve two different jobs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel

from ..errors import JobConfigError
from ..jobs.payload import key_text, payload_field, require_field

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
KEY_PREFIX = "jobs_core:idem:"
DEFAULT_MEMORY_KEYS = 10_000
"""How many keys the in-process store keeps at most (about 2.5 MB); the oldest go first."""
STALE_LIMIT = 4
"""Claims the in-process store remembers, as a multiple of its cap, before it sweeps out the
claims of released keys."""

logger = logging.getLogger("jobs_core.idempotency")

IdempotencyRule = str | Callable[[Any], "str | None"]
"""A payload field's name, or a callable of the payload model returning the key (or None)."""


def check_rule(job_name: str, model: type[BaseModel], rule: Any) -> IdempotencyRule | None:
    """A job's `idempotency=` option, checked when the job is defined (C27): a field of its
    payload model, or a callable."""
    if isinstance(rule, str):
        require_field(job_name, model, "idempotency", rule)
    elif rule is not None and not callable(rule):
        raise JobConfigError(
            f"job {job_name!r}: idempotency= must be a payload field's name or a callable of "
            f"the payload, got {rule!r}"
        )
    return rule  # type: ignore[no-any-return]


def payload_key(
    job_name: str, rule: IdempotencyRule, payload: Callable[[], BaseModel], data: Any
) -> str | None:
    """A dispatch's idempotency key derived from its payload by `rule` (C27), or None: a field
    that is None or empty, or a callable returning None, means no key for that dispatch.
    `payload` gives the validated model (only a callable rule asks for it); `data` is the
    payload's JSON."""
    value = payload_field(data, rule) if isinstance(rule, str) else rule(payload())
    if value is None or value == "":
        return None
    if callable(rule) and not isinstance(value, str):
        raise JobConfigError(
            f"job {job_name!r}: the idempotency callable returned {value!r}; "
            "it must return a str (or None for no key)"
        )
    return key_text(value)


def describe_rule(rule: IdempotencyRule) -> str:
    """The rule as text (for `python -m jobs_core list`)."""
    return rule if isinstance(rule, str) else getattr(rule, "__qualname__", repr(rule))


def scoped_key(job_name: str, key: str) -> str:
    return f"{KEY_PREFIX}{job_name}:{key}"


class IdempotencyStore(Protocol):
    """Claims keys before a job is enqueued, and releases them if the enqueue failed."""

    def claim(self, claims: Sequence[tuple[str, str]]) -> list[str | None]:
        """For each (scoped key, dispatch id): None if claimed now, else the earlier dispatch id."""
        ...

    def release(self, keys: Sequence[str]) -> None: ...


Entry = tuple[str, float, str]
"""A claim: (dispatch id, expiry on the monotonic clock, key)."""


class MemoryIdempotencyStore:
    """Keys in this process only: the inline backend's store, and the fallback of the others.

    Claims cost O(1): keys expire in the order they were claimed (every key lives `ttl_seconds`),
    so expired ones are dropped from the front. Beyond `max_keys` the oldest keys are forgotten
    before their time (a 64th of the cap at once, so that a full store does not trim on every
    claim), and the store says so: a warning the first time, each key at DEBUG, and the count
    in `evicted`. A forgotten key no longer deduplicates.

    A claim is one `dict.setdefault`, which is atomic (under the GIL, and by the dict's own lock
    on free-threaded Python), so of two threads claiming one key exactly one gets it, without
    a lock on every claim; dropping, trimming and releasing keys take the store's lock.
    """

    def __init__(
        self, ttl_seconds: float = IDEMPOTENCY_TTL_SECONDS, max_keys: int = DEFAULT_MEMORY_KEYS
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be more than 0, got {ttl_seconds}")
        self.ttl_seconds = ttl_seconds
        self.max_keys = max_keys
        self.evicted = 0
        self._keys: dict[str, Entry] = {}
        self._order: deque[Entry] = deque()
        """Every claim in claim order; one whose key was released or claimed anew is stale."""
        self._next_expiry = math.inf
        """No key expires before this (the oldest key's expiry when last looked at)."""
        self._lock = threading.Lock()
        self._order_limit = STALE_LIMIT * max_keys
        """How many claims the order holds before its stale ones are swept out."""

    def claim(self, claims: Sequence[tuple[str, str]]) -> list[str | None]:
        now = time.monotonic()
        if now >= self._next_expiry:
            self._expire(now)
        expires = now + self.ttl_seconds
        keys, order = self._keys, self._order
        results: list[str | None] = []
        for key, dispatch_id in claims:
            entry = (dispatch_id, expires, key)
            held = keys.setdefault(key, entry)
            if held is not entry and held[1] <= now:  # expired, not dropped yet
                held = self._claim_expired(entry, now)
            if held is entry:
                order.append(entry)
                results.append(None)
            else:
                results.append(held[0])
        if len(keys) > self.max_keys or len(order) > self._order_limit:
            self._trim()
        if expires < self._next_expiry:
            self._next_expiry = expires
        return results

    def release(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)

    def _claim_expired(self, entry: Entry, now: float) -> Entry:
        """Claim `entry`'s key over a holder that has expired; another live holder wins."""
        keys, key = self._keys, entry[2]
        with self._lock:
            held = keys.get(key)
            if held is None or held[1] <= now:
                keys[key] = entry
                return entry
            return held

    def _expire(self, now: float) -> None:
        with self._lock:
            keys, order = self._keys, self._order
            while order:
                entry = order[0]
                if entry[1] > now:
                    self._next_expiry = entry[1]
                    return
                order.popleft()
                if keys.get(entry[2]) is entry:
                    del keys[entry[2]]
            self._next_expiry = math.inf

    def _trim(self) -> None:
        """Forget the oldest keys, down to `max_keys` less a 64th (a full store trims once
        every `max_keys // 64` claims rather than on each one), and drop stale claims: a
        released key leaves its claim behind, so claims and releases without end would
        otherwise grow the order without bound."""
        keys, order = self._keys, self._order
        keep = self.max_keys - self.max_keys // 64
        forgotten: list[str] = []
        with self._lock:
            first = not self.evicted
            while order and len(keys) > keep:
                entry = order.popleft()
                if keys.get(entry[2]) is entry:
                    del keys[entry[2]]
                    forgotten.append(entry[2])
            if len(order) > self._order_limit:
                for _ in range(len(order)):  # keep the live claims, in their order
                    entry = order.popleft()
                    if keys.get(entry[2]) is entry:
                        order.append(entry)
            self.evicted += len(forgotten)
        if forgotten and first:
            logger.warning(
                "the in-process idempotency store is full (%d keys): forgetting the oldest "
                "keys before their 24 h are up, so a repeat of those runs again; use a "
                "shared store (Redis) where repeats matter",
                self.max_keys,
            )
        if logger.isEnabledFor(logging.DEBUG):
            for key in forgotten:
                logger.debug("idempotency key %s forgotten (store full)", key)


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

    def close(self) -> None:
        self.client.close()


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://", "redis+socket://"))


def redis_client(url: str, timeout: float) -> Any:
    """A redis-py client that never waits longer than `timeout` and never retries on its own,
    so that a dispatch to a dead broker fails within the dispatch timeout (C7)."""
    import redis  # installed with every backend whose broker can be Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def idempotency_store_for(
    url: str, timeout: float, *, what: str, client: Any = None
) -> IdempotencyStore:
    """The store for a producer whose shared state lives at `url` (the broker, or an explicit
    `idempotency_url`): Redis is shared by every producer (through `client` when the producer
    already has one for that URL); anything else falls back to this process, with a warning
    naming `what` (the backend)."""
    if is_redis_url(url):
        return RedisIdempotencyStore(client if client is not None else redis_client(url, timeout))
    logger.warning(
        "%s: the broker is not Redis and no idempotency_url='redis://...' was given, so "
        "idempotency keys are kept in this process only (not shared between producers)",
        what,
    )
    return MemoryIdempotencyStore()
