"""Idempotency (C9, C27): the first dispatch with a key claims it for 24 h; later ones are no-ops.

A key is given at dispatch (`idempotency_key=`) or derived from the payload by the job's
`idempotency=` rule (a field's name, or a callable of the payload); the explicit one wins.
Keys are scoped by job name, so one key string can serve two different jobs.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from ..errors import JobConfigError, JobsError
from ..jobs.payload import key_text, payload_field, require_field

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
KEY_PREFIX = "jobs_core:idem:"
DEFAULT_MEMORY_KEYS = 10_000
"""How many keys the in-process store keeps at most (about 2.5 MB); the oldest go first."""
PENDING_SECONDS = 11.0
"""How long a pending claim in Redis outlives a sender that died (twice the default dispatch
timeout, and a second): then another dispatch of the key may claim it."""
PENDING_POLL = 0.05
"""Seconds between looks at a key another dispatch is still sending."""

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


# -- the stores ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """One dispatch's claim on its key: `key` is scoped by job (`scoped_key`), `token` tells
    this attempt's pending claim from another's (two sends of one keyed dispatch share their
    dispatch id)."""

    key: str
    dispatch_id: str
    token: str = field(default_factory=lambda: secrets.token_hex(8))


class KeyPending(JobsError):
    """A key is claimed by a dispatch still being sent (or one that died sending it, until its
    claim lapses): raised when it stays so for the whole dispatch timeout."""


class IdempotencyStore(Protocol):
    """Where keys are claimed (C9): the first dispatch with a key claims it; a later one within
    the TTL is a duplicate. A claim is pending until its job was sent: `confirm` makes it hold
    for the TTL, `release` frees it when the send failed."""

    def claim(self, claims: Sequence[Claim], wait: float) -> list[str | None]:
        """For each claim: None where the key is claimed now, else the dispatch id that holds
        it. A key pending for another dispatch is waited for up to `wait` seconds; one still
        pending then raises `KeyPending`."""
        ...

    def confirm(self, claims: Sequence[Claim]) -> None:
        """The jobs of these claims were sent: their keys hold for the TTL."""
        ...

    def release(self, claims: Sequence[Claim]) -> None:
        """The jobs of these claims were not sent: their keys are free again."""
        ...


class MemoryIdempotencyStore:
    """Keys in this process only: the inline backend's store, and the fallback of the others
    (with a warning). A claim holds at once: a send in this process ends, or fails and releases
    its keys, within the dispatch call. Keys expire after `ttl_seconds`, in the order they were
    claimed; beyond `max_keys` the oldest are forgotten early, and the store says so (a warning
    the first time, the count in `evicted`): a forgotten key no longer deduplicates."""

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
        self._keys: OrderedDict[str, tuple[str, float]] = OrderedDict()
        """key -> (dispatch id, expiry on the monotonic clock), oldest claim first."""
        self._lock = threading.Lock()

    def claim(self, claims: Sequence[Claim], wait: float = 0.0) -> list[str | None]:
        now = time.monotonic()
        results: list[str | None] = []
        with self._lock:
            keys = self._keys
            while keys and next(iter(keys.values()))[1] <= now:
                keys.popitem(last=False)
            for claim in claims:
                held = keys.get(claim.key)
                if held is not None:
                    results.append(held[0])
                    continue
                keys[claim.key] = (claim.dispatch_id, now + self.ttl_seconds)
                results.append(None)
            forgotten = [keys.popitem(last=False)[0] for _ in range(len(keys) - self.max_keys)]
        if forgotten:
            self._forgot(forgotten)
        return results

    def confirm(self, claims: Sequence[Claim]) -> None:
        """Nothing to do: a claim in this process holds at once."""

    def release(self, claims: Sequence[Claim]) -> None:
        with self._lock:
            for claim in claims:
                held = self._keys.get(claim.key)
                if held is not None and held[0] == claim.dispatch_id:
                    del self._keys[claim.key]

    def _forgot(self, keys: list[str]) -> None:
        if not self.evicted:
            logger.warning(
                "the in-process idempotency store is full (%d keys): forgetting the oldest "
                "keys before their 24 h are up, so a repeat of those runs again; use a "
                "shared store (Redis) where repeats matter",
                self.max_keys,
            )
        self.evicted += len(keys)
        logger.debug("idempotency keys forgotten (store full): %s", keys)

    def __len__(self) -> int:
        return len(self._keys)


PENDING = "~"
"""Starts the value of a pending claim in Redis: `~<token> <dispatch id>`."""

_CLAIM = """
-- KEYS: the keys; ARGV: per key its pending value, then the pending lifetime (ms).
local ttl = ARGV[#ARGV]
local out = {}
for i, key in ipairs(KEYS) do
  local held = redis.call('GET', key)
  if not held then
    redis.call('SET', key, ARGV[i], 'PX', ttl)
    out[i] = ''
  elseif string.sub(held, 1, 1) == '~' then
    out[i] = '~'
  else
    out[i] = held
  end
end
return out
"""

_SETTLE = """
-- KEYS: the keys; ARGV: per key its pending value, then the TTL (s), or 0 to release.
local ttl = tonumber(ARGV[#ARGV])
for i, key in ipairs(KEYS) do
  local mine = ARGV[i]
  if redis.call('GET', key) == mine then
    if ttl > 0 then
      redis.call('SET', key, string.sub(mine, string.find(mine, ' ', 1, true) + 1), 'EX', ttl)
    else
      redis.call('DEL', key)
    end
  end
end
return 0
"""

Enqueue = Callable[[Any, list[int]], None]
"""Adds to a Redis transaction the commands that enqueue the jobs at these indexes."""


class RedisIdempotencyStore:
    """Keys in Redis, shared by every producer (Celery and Dramatiq on Redis, or any backend
    given `idempotency_url="redis://..."`). `client` is a redis-py `Redis` (jobs_core imports no
    broker library); `pending_seconds` is how long a claim whose sender died holds its key
    before another dispatch may take it (longer than any send: twice the dispatch timeout).

    Where the jobs go to the same Redis, `send_claiming` claims the keys and enqueues the jobs
    in one transaction: no crash can leave one without the other (C32, no window).
    """

    def __init__(
        self,
        client: Any,
        ttl_seconds: int = IDEMPOTENCY_TTL_SECONDS,
        pending_seconds: float = PENDING_SECONDS,
    ) -> None:
        self.client = client
        self.ttl_seconds = ttl_seconds
        self.pending_seconds = pending_seconds

    def claim(self, claims: Sequence[Claim], wait: float) -> list[str | None]:
        results: list[str | None] = [None] * len(claims)
        todo = list(range(len(claims)))
        deadline = time.monotonic() + wait
        while True:
            keys = [claims[i].key for i in todo]
            values = [_pending(claims[i]) for i in todo]
            ttl = int(self.pending_seconds * 1000)
            replies = self.client.eval(_CLAIM, len(keys), *keys, *values, ttl)
            waiting = []
            for i, reply in zip(todo, map(_text, replies)):
                if reply == PENDING:
                    waiting.append(i)
                else:
                    results[i] = reply or None
            if not waiting:
                return results
            _wait_or_give_up(deadline, [claims[i].key for i in waiting])
            todo = waiting

    def confirm(self, claims: Sequence[Claim]) -> None:
        self._settle(claims, self.ttl_seconds)

    def release(self, claims: Sequence[Claim]) -> None:
        self._settle(claims, 0)

    def _settle(self, claims: Sequence[Claim], ttl: int) -> None:
        if claims:
            keys = [c.key for c in claims]
            self.client.eval(_SETTLE, len(keys), *keys, *map(_pending, claims), ttl)

    def send_claiming(
        self, claims: Sequence[Claim], enqueue: Enqueue, wait: float
    ) -> list[str | None]:
        """Claim each key and enqueue the jobs whose keys were free, in one Redis transaction
        (WATCH, MULTI, EXEC): the claims hold at once. `enqueue(pipe, indexes)` adds the jobs'
        enqueue commands to the transaction. Returns what `claim` returns."""
        from redis.exceptions import WatchError  # installed with every Redis broker

        keys = [c.key for c in claims]
        deadline = time.monotonic() + wait
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*keys)
                    held = [_text(v) for v in pipe.mget(keys)]
                    pending = [k for k, h in zip(keys, held) if h.startswith(PENDING)]
                    if pending:
                        pipe.reset()
                        _wait_or_give_up(deadline, pending)
                        continue
                    free = [i for i, h in enumerate(held) if not h]
                    pipe.multi()
                    for i in free:
                        pipe.set(keys[i], claims[i].dispatch_id, ex=self.ttl_seconds)
                    enqueue(pipe, free)
                    if pipe.command_stack:
                        pipe.execute()
                    else:  # every job a duplicate: nothing to write
                        pipe.reset()
                    return [h or None for h in held]
                except WatchError:  # a key changed between WATCH and EXEC: look again
                    continue

    def close(self) -> None:
        self.client.close()


def _pending(claim: Claim) -> str:
    return f"{PENDING}{claim.token} {claim.dispatch_id}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _wait_or_give_up(deadline: float, keys: list[str]) -> None:
    if time.monotonic() >= deadline:
        raise KeyPending(
            f"idempotency key(s) {', '.join(keys)} are claimed by a dispatch still being sent "
            "(or one that died sending it, whose claim has not lapsed yet): try again later"
        )
    time.sleep(PENDING_POLL)


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
        client = client if client is not None else redis_client(url, timeout)
        return RedisIdempotencyStore(client, pending_seconds=2 * timeout + 1)
    logger.warning(
        "%s: the broker is not Redis and no idempotency_url='redis://...' was given, so "
        "idempotency keys are kept in this process only (not shared between producers)",
        what,
    )
    return MemoryIdempotencyStore()
