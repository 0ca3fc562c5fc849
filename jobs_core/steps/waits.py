"""Runs waiting for an event (`step.wait_for_event`, and `step.invoke`'s wait for its child),
for the core's engine: where a waiting run is recorded, and how exactly one resume is chosen.

A waiting run is a `Waiter`: the run, the step, the event and the value of the field it
matches on, and a deadline. A `send` of that event resumes every waiter whose value matches
(`take_matching`); a worker's sweep resumes those whose deadline passed (`take_due`). Either
way the resume claims the step's record first (`s:<key>` in the run's records: the event's
data, or `null` at the timeout), and only the claim's winner enqueues the run again: a run
resumes once, with the event or with None, never both (C42).

The waits live where the steps do: in process (`MemoryWaits`, inline) or in Redis
(`RedisWaits`, beside `RedisStepStore`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import pydantic_core

INVOKE_DONE = "jobs_core/invoke.done"
"""The internal event a child run sends when it ends, for the parent waiting on it (C43)."""


@dataclass(frozen=True)
class Waiter:
    """One run waiting at one step for an event whose `field` equals `value` (JSON text)."""

    run_id: str
    key: str
    job_name: str
    data: Any
    """The run's payload as its message carried it (to deliver the run again)."""
    event: str
    field: str
    value: str
    deadline: float
    """Unix time at which the wait ends with None."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Waiter:
        return cls(**json.loads(text))


def match_value(value: Any) -> str:
    """A field's value as waits compare it: its JSON."""
    return pydantic_core.to_json(value).decode()


class EventWaits(Protocol):
    """Where waiting runs are kept, and resumed once."""

    def register(self, waiter: Waiter) -> None:
        """Record `waiter` (again, harmlessly, if it is there)."""
        ...

    def take_matching(self, event: str, data: Mapping[str, Any]) -> list[Waiter]:
        """Claim the resume of every waiter on `event` whose field matches `data`, with `data`
        as the wait's value; return the claimed ones (the caller delivers their runs)."""
        ...

    def take_due(self, now: float, limit: int = 100) -> list[Waiter]:
        """Claim the resume, with None, of up to `limit` waiters whose deadline passed."""
        ...

    def release(self, waiter: Waiter) -> None:
        """Undo the claim of `waiter` (its run could not be enqueued): it waits on."""
        ...


class MemoryWaits:
    """Waits in this process, claiming in a `MemoryStepStore`'s records."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._waiting: dict[tuple[str, str], Waiter] = {}
        self._lock = threading.Lock()

    def register(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiting[waiter.run_id, waiter.key] = waiter

    def _take(self, chosen: list[Waiter], value: str) -> list[Waiter]:
        taken = []
        for waiter in chosen:
            if self.store.save(waiter.run_id, f"s:{waiter.key}", value) == value:
                taken.append(waiter)
            self._waiting.pop((waiter.run_id, waiter.key), None)
        return taken

    def take_matching(self, event: str, data: Mapping[str, Any]) -> list[Waiter]:
        text = match_value(dict(data))
        with self._lock:
            chosen = [
                w
                for w in self._waiting.values()
                if w.event == event and w.field in data and match_value(data[w.field]) == w.value
            ]
            return self._take(chosen, text)

    def take_due(self, now: float, limit: int = 100) -> list[Waiter]:
        with self._lock:
            chosen = [w for w in self._waiting.values() if w.deadline <= now][:limit]
            return self._take(chosen, "null")

    def release(self, waiter: Waiter) -> None:
        self.store.forget(waiter.run_id, f"s:{waiter.key}")
        self.register(waiter)

    def next_deadline(self) -> float | None:
        with self._lock:
            return min((w.deadline for w in self._waiting.values()), default=None)


RESUME_GRACE = 600.0
"""Seconds a claimed resume has to show up in its run (the run records `r:<key>` when it
resumes) before a sweep delivers the run again: the claim and the enqueue that follows it are
two steps, and a producer killed between them must not leave the run parked for good."""

# Claim each waiter of the index keys, or the due ones: HSETNX on the run's records decides.
# A claimed waiter stays in the deadline set, due again after the grace period (ARGV[3]).
_TAKE_MATCHING = """
local prefix, value, grace_at = ARGV[1], ARGV[2], ARGV[3]
local taken = {}
for i, index in ipairs(KEYS) do
  if i > 1 then
    local entries = redis.call('HGETALL', index)
    for j = 1, #entries, 2 do
      local waiter = cjson.decode(entries[j + 1])
      if redis.call('HSETNX', prefix .. waiter.run_id, 's:' .. waiter.key, value) == 1 then
        table.insert(taken, entries[j + 1])
        redis.call('ZADD', KEYS[1], grace_at, entries[j + 1])
      end
      redis.call('HDEL', index, entries[j])
    end
  end
end
return taken
"""

# A due waiter not claimed yet is claimed with None (its timeout); one claimed whose run never
# recorded its resume is delivered again (its records hold what it resumes with); one whose
# run resumed is done with.
_TAKE_DUE = """
local prefix, now, limit, grace_at = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[5]
local taken = {}
for _, text in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)) do
  local waiter = cjson.decode(text)
  local run = prefix .. waiter.run_id
  redis.call('HDEL', ARGV[4] .. waiter.event .. ':' .. waiter.field .. ':' .. waiter.value,
             waiter.run_id .. '|' .. waiter.key)
  if redis.call('HSETNX', run, 's:' .. waiter.key, 'null') == 1
     or redis.call('HEXISTS', run, 'r:' .. waiter.key) == 0 then
    table.insert(taken, text)
    redis.call('ZADD', KEYS[1], grace_at, text)
  else
    redis.call('ZREM', KEYS[1], text)
  end
end
return taken
"""


class RedisWaits:
    """Waits in Redis, beside a `RedisStepStore` (same client, same run records): an index
    hash per (event, field, value), the fields waited on per event, and the deadlines."""

    def __init__(
        self,
        client: Any,
        steps_prefix: str,
        prefix: str = "jobs:waits:",
        resume_grace: float = RESUME_GRACE,
    ) -> None:
        self.client = client
        self.resume_grace = resume_grace
        self.steps_prefix = steps_prefix
        self.prefix = prefix
        self.due = prefix + "due"
        self._matching = client.register_script(_TAKE_MATCHING)
        self._due = client.register_script(_TAKE_DUE)

    def _index(self, event: str, field: str, value: str) -> str:
        return f"{self.prefix}{event}:{field}:{value}"

    def register(self, waiter: Waiter) -> None:
        text = waiter.to_json()
        with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(f"{self.prefix}fields:{waiter.event}", waiter.field)
            index = self._index(waiter.event, waiter.field, waiter.value)
            pipe.hset(index, f"{waiter.run_id}|{waiter.key}", text)
            pipe.zadd(self.due, {text: waiter.deadline})
            pipe.execute()

    def take_matching(self, event: str, data: Mapping[str, Any]) -> list[Waiter]:
        fields = [_text(f) for f in self.client.smembers(f"{self.prefix}fields:{event}")]
        indexes = [
            self._index(event, field, match_value(data[field])) for field in fields if field in data
        ]
        if not indexes:
            return []
        value = match_value(dict(data))
        grace_at = repr(time.time() + self.resume_grace)
        taken = self._matching(keys=[self.due, *indexes], args=[self.steps_prefix, value, grace_at])
        return [Waiter.from_json(t) for t in taken]

    def take_due(self, now: float, limit: int = 100) -> list[Waiter]:
        args = [self.steps_prefix, repr(now), limit, self.prefix, repr(now + self.resume_grace)]
        taken = self._due(keys=[self.due], args=args)
        return [Waiter.from_json(t) for t in taken]

    def release(self, waiter: Waiter) -> None:
        self.client.hdel(self.steps_prefix + waiter.run_id, f"s:{waiter.key}")
        self.register(waiter)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sleep_until_due(waits: MemoryWaits, stop: threading.Event) -> float:
    """Seconds until the next deadline of `waits` (at most 1), for a sweeper's wait."""
    deadline = waits.next_deadline()
    if deadline is None:
        return 1.0
    return max(0.0, min(1.0, deadline - time.time()))
