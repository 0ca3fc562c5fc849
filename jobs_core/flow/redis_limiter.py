"""Flow control on Redis, shared by every Celery or Dramatiq worker: `RedisFlowLimiter`.

The rule is `jobs_core.flow.limiter`'s, applied by one Lua script on the Redis clock, so that any
number of worker processes share it exactly. Per job, limit and key value, three sorted sets
under `jobs_core:flow:`:

- the held set: for a concurrency limit (`{job}:c[:=value]`) one member per running run,
  scored by the end of its lease, which its worker renews every `lease / 3`, so the slot of a
  worker that died comes back at most `lease` (30 s by default, `JOBS_FLOW_LEASE`) after its
  last renewal; for a throttle (`{job}:t[:=value]`) one member per start, scored by its time:
  a sliding window, so no window of `period` ever holds more than `limit` starts;
- `<held>:q` and `<held>:d`: the runs waiting, by first arrival and by when they were told to
  ask again.

jobs_core does not import redis here: `client` is a redis-py `Redis` made by the adapter.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from ..config import load_settings, redact_url
from ..dispatch.idempotency import is_redis_url, redis_client
from ..errors import JobConfigError
from ..jobs.registry import JobRegistry
from .limiter import Admission
from .options import Resource, flow_refusal

KEY_PREFIX = "jobs_core:flow:"

logger = logging.getLogger("jobs_core.flow")

# KEYS: per resource, its held, queue and due sets. ARGV: waiter, holder, poll, max poll, slack,
# grace (ms), then per resource: kind ('c' or 't'), limit, lease or period (ms).
# Returns {1, 0} when the run may start (and records it), else {0, milliseconds to wait}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local waiter, holder = ARGV[1], ARGV[2]
local poll, max_poll = tonumber(ARGV[3]), tonumber(ARGV[4])
local slack, grace = tonumber(ARGV[5]), tonumber(ARGV[6])
local n = #KEYS / 3
local function arg(i, j) return ARGV[6 + 3 * (i - 1) + j] end
local function ttl_at_least(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, math.ceil(ms)) end
end
local present = 0
for i = 1, n do
  local held, queue, due = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local ms = tonumber(arg(i, 3))
  redis.call('ZREMRANGEBYSCORE', held, '-inf', arg(i, 1) == 'c' and now or now - ms)
  local gone = redis.call('ZRANGEBYSCORE', due, '-inf', now - grace)
  for _, id in ipairs(gone) do
    redis.call('ZREM', queue, id)
    redis.call('ZREM', due, id)
  end
  if redis.call('ZSCORE', queue, waiter) then present = present + 1 end
end
if present > 0 and present < n then
  for i = 1, n do
    redis.call('ZREM', KEYS[3 * i - 1], waiter)
    redis.call('ZREM', KEYS[3 * i], waiter)
  end
end
local wait = 0
for i = 1, n do
  local held, queue, due = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local limit, ms = tonumber(arg(i, 2)), tonumber(arg(i, 3))
  local used = redis.call('ZCARD', held)
  local free = limit - used
  local ahead = redis.call('ZRANK', queue, waiter) or redis.call('ZCARD', queue)
  local live = 0
  local first = 0
  while first < ahead and live < free do
    local ids = redis.call('ZRANGE', queue, first, math.min(first + 63, ahead - 1))
    for _, id in ipairs(ids) do
      local d = tonumber(redis.call('ZSCORE', due, id) or now)
      if d + slack >= now and d <= now + 2 * poll then live = live + 1 end
      if live >= free then break end
    end
    first = first + 64
  end
  if free <= 0 or live >= free then
    local w = math.min(max_poll, poll * math.max(1, ahead - math.max(free, 0) + 1 - limit))
    if arg(i, 1) == 't' and used > 0 then
      local idx = math.min(math.max(ahead - free, 0), used - 1)
      local s = redis.call('ZRANGE', held, idx, idx, 'WITHSCORES')
      w = math.max(tonumber(s[2]) + ms - now, 1)
    end
    if w > wait then wait = w end
  end
end
if wait > 0 then
  for i = 1, n do
    redis.call('ZADD', KEYS[3 * i - 1], 'NX', now, waiter)
    redis.call('ZADD', KEYS[3 * i], now + wait, waiter)
    ttl_at_least(KEYS[3 * i - 1], wait + grace + 1000)
    ttl_at_least(KEYS[3 * i], wait + grace + 1000)
  end
  return {0, math.ceil(wait)}
end
for i = 1, n do
  local held, ms = KEYS[3 * i - 2], tonumber(arg(i, 3))
  redis.call('ZREM', KEYS[3 * i - 1], waiter)
  redis.call('ZREM', KEYS[3 * i], waiter)
  if arg(i, 1) == 'c' then
    redis.call('ZADD', held, now + ms, holder)
    ttl_at_least(held, 2 * ms)
  else
    redis.call('ZADD', held, now, holder)
    ttl_at_least(held, ms)
  end
end
return {1, 0}
"""

# KEYS: the held sets of this worker's leases; ARGV: the lease (ms), then each lease's holder.
# Returns how many leases were gone (expired before this renewal: their slots were given away).
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local lost = 0
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', now + lease, ARGV[i + 1]) == 0 then
    lost = lost + 1
  elseif redis.call('PTTL', KEYS[i]) < 2 * lease then
    redis.call('PEXPIRE', KEYS[i], 2 * lease)
  end
end
return lost
"""

DEFAULT_LEASE = 30.0
"""Seconds a concurrency slot stays taken without renewal: the bound on how long the slot of a
worker that died stays lost."""


class RedisFlowLimiter:
    """Admits runs past their limits on Redis, for every worker process sharing `client`.

    `lease` (seconds) bounds how long a dead worker's slots stay taken; `poll` / `max_poll` how
    often a run waiting for a concurrency slot asks again (growing with its place in the
    queue); `slack`, how late a waiter may be and keep its turn; `grace`, how late it may be
    and keep its place (see `jobs_core.flow.limiter`). A worker process renews its leases in a
    daemon thread, started with its first lease (in each process, after a fork).
    """

    def __init__(
        self,
        client: Any,
        *,
        lease: float = DEFAULT_LEASE,
        prefix: str = KEY_PREFIX,
        poll: float = 0.025,
        max_poll: float = 1.0,
        slack: float = 0.25,
        grace: float = 10.0,
    ) -> None:
        if lease <= 0:
            raise JobConfigError(f"the flow-control lease must be positive, got {lease!r}")
        self.client = client
        self.lease = lease
        self.prefix = prefix
        self._options = [round(x * 1000) for x in (poll, max_poll, slack, grace)]
        self._admit = client.register_script(ADMIT)
        self._renew = client.register_script(RENEW)
        self._leases: dict[str, list[str]] = {}  # holder -> the held sets it is in
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._pid = 0
        self._closed = threading.Event()

    def admit(self, resources: Sequence[Resource], waiter: str) -> Admission:
        holder = uuid.uuid4().hex
        keys: list[str] = []
        args: list[Any] = [waiter, holder, *self._options]
        lease_ms = round(self.lease * 1000)
        for r in resources:
            base = self.prefix + r.name
            keys += [base, base + ":q", base + ":d"]
            args += [r.kind, r.limit, lease_ms if r.kind == "c" else round(r.seconds * 1000)]
        admitted, wait_ms = self._admit(keys=keys, args=args)
        if not admitted:
            return Admission(max(int(wait_ms), 1) / 1000)
        held = [self.prefix + r.name for r in resources if r.kind == "c"]
        if not held:
            return Admission()
        with self._lock:
            self._leases[holder] = held
        self._start_renewer()
        return Admission(release=lambda: self._release(holder, held))

    def _release(self, holder: str, held: list[str]) -> None:
        with self._lock:
            self._leases.pop(holder, None)
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in held:
                pipe.zrem(key, holder)
            pipe.execute()
        except Exception as error:  # the slot comes back when its lease ends
            logger.warning("could not release a concurrency slot (%s); its lease ends it", error)

    def renew(self) -> int:
        """Extend every lease this process holds; returns how many were already lost."""
        with self._lock:
            leases = [(key, holder) for holder, keys in self._leases.items() for key in keys]
        if not leases:
            return 0
        keys = [key for key, _ in leases]
        args = [round(self.lease * 1000), *(holder for _, holder in leases)]
        lost = int(self._renew(keys=keys, args=args))
        if lost:
            logger.warning(
                "%d running job(s) lost their concurrency slot: not renewed for %gs (a paused "
                "process, or the flow-control store unreachable); their slots may be given away",
                lost,
                self.lease,
            )
        return lost

    def _start_renewer(self) -> None:
        if self._renewer is not None and self._renewer.is_alive() and self._pid == os.getpid():
            return
        with self._lock:  # a forked child (Celery's prefork pool) starts its own renewer
            if self._renewer is None or not self._renewer.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._renewer = threading.Thread(
                    target=self._renew_forever, name="jobs-core-flow-leases", daemon=True
                )
                self._renewer.start()

    def _renew_forever(self) -> None:
        while not self._closed.wait(self.lease / 3):
            try:
                self.renew()
            except Exception as error:
                logger.warning("could not renew concurrency leases: %s", error)

    def close(self) -> None:
        """Stop renewing leases (the runs still holding one lose it after `lease`)."""
        self._closed.set()


def redis_flow_limiter(
    registry: JobRegistry[Any], backend: str, *, broker_url: str | None = None, client: Any = None
) -> RedisFlowLimiter | None:
    """The limiter for a Celery or Dramatiq worker of `registry`, or None when no job has a
    concurrency or throttle option. Its Redis is `JOBS_FLOW_URL`, else the broker's (`client`,
    or `broker_url`); a broker that is not Redis, with no `JOBS_FLOW_URL`, cannot hold limits
    shared by every worker, so each such job is refused here (C28)."""
    limited = [job for job in registry if job.flow is not None and job.flow.limited]
    if not limited:
        return None
    settings = load_settings()
    url = settings.flow_url or broker_url or ""
    if settings.flow_url is None and client is not None:
        return RedisFlowLimiter(client, lease=settings.flow_lease)
    if not is_redis_url(url):
        job = limited[0]
        assert job.flow is not None
        option = "concurrency" if job.flow.concurrency is not None else "throttle"
        source = "JOBS_FLOW_URL" if settings.flow_url else "the broker"
        others = ", ".join(repr(j.name) for j in limited[1:])
        raise flow_refusal(
            job.name,
            option,
            backend,
            f"its limits must live in a Redis server that every worker shares, and {source} "
            f"{redact_url(url)!r} is not Redis: set JOBS_FLOW_URL=redis://..."
            + (f" (also needed by {others})" if others else ""),
        )
    return RedisFlowLimiter(redis_client(url, settings.dispatch_timeout), lease=settings.flow_lease)
