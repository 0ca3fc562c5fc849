"""Jobs with flow control whose runs record themselves in Redis (C25, C26).

Worker processes load `tests.conformance.flow_app:jobs` with the context factory
`tests.conformance.flow_app:create_context`, reading `FLOW_APP_SUFFIX` (part of every job name,
so no two test runs share a limit) and `FLOW_APP_STORE` (the Redis that records the runs); a
test builds the same registry in its own process with `make_jobs(suffix)` and reads what the
runs recorded through `Store`. Every job has `Retry(attempts=0)`: a wait that used an attempt
would make the run fail, which `on_failure` records.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from functools import partial
from typing import Any

import redis
from pydantic import BaseModel

from jobs_core import Concurrency, JobRegistry, Retry, Throttle


class Hold(BaseModel):
    n: int
    hold: float = 0.2
    group: str = "a"


_ENTER = """
local v = redis.call('INCR', KEYS[1])
if v > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], v) end
return v
"""


class Store:
    """What the runs of one suffix recorded: runs at once (now and at most), starts, ends."""

    def __init__(self, url: str, suffix: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        self.prefix = f"flowtest:{suffix}"
        self._enter = self.redis.register_script(_ENTER)

    def _key(self, *parts: str) -> str:
        return ":".join([self.prefix, *parts])

    def run(self, job_name: str, payload: Hold) -> None:
        """The handler of every job here: count itself in, record its start, hold, count out."""
        counters = [("all",), ("group", payload.group)]
        for scope in counters:
            self._enter(
                keys=[self._key(job_name, "now", *scope), self._key(job_name, "max", *scope)]
            )
        start = {"n": payload.n, "group": payload.group, "t": time.time(), "pid": os.getpid()}
        self.redis.rpush(self._key(job_name, "starts"), json.dumps(start))
        time.sleep(payload.hold)  # the job's own work, not a synchronisation
        for scope in counters:
            self.redis.decr(self._key(job_name, "now", *scope))
        self.redis.rpush(self._key(job_name, "done"), payload.n)

    def failed(self, job_name: str, error: BaseException) -> None:
        self.redis.rpush(self._key(job_name, "failed"), f"{type(error).__name__}: {error}")

    def peak(self, job_name: str, *scope: str) -> int:
        value = self.redis.get(self._key(job_name, "max", *(scope or ("all",))))
        return int(value) if value is not None else 0

    def starts(self, job_name: str) -> list[dict[str, Any]]:
        raw = self.redis.lrange(self._key(job_name, "starts"), 0, -1)
        return [json.loads(item) for item in raw]

    def done(self, job_name: str) -> list[int]:
        return [int(n) for n in self.redis.lrange(self._key(job_name, "done"), 0, -1)]

    def failures(self, job_name: str) -> list[str]:
        return [f.decode() for f in self.redis.lrange(self._key(job_name, "failed"), 0, -1)]  # type: ignore[union-attr]

    def clear(self) -> None:
        keys = list(self.redis.scan_iter(match=f"{self.prefix}:*", count=500))
        if keys:
            self.redis.delete(*keys)

    def close(self) -> None:
        self.redis.close()


class Names:
    """The job names of one suffix."""

    def __init__(self, suffix: str) -> None:
        kinds = ("concurrency", "keyed", "throttle", "lease")
        self.concurrency, self.keyed, self.throttle, self.lease = (
            f"flow.{kind}.{suffix}" for kind in kinds
        )


def make_jobs(suffix: str) -> JobRegistry[Store]:
    """The registry of one suffix: the same in worker processes and in the test."""
    jobs = JobRegistry[Store]()
    names = Names(suffix)
    second = timedelta(seconds=1)
    options: list[tuple[str, dict[str, Any]]] = [
        (names.concurrency, {"concurrency": Concurrency(limit=2)}),
        (names.keyed, {"concurrency": Concurrency(limit=1, key="group")}),
        (names.throttle, {"throttle": Throttle(limit=5, period=second)}),
        (names.lease, {"concurrency": Concurrency(limit=1)}),
    ]
    for name, flow in options:

        def on_failure(error: BaseException, payload: Any, ctx: Store, name: str = name) -> None:
            ctx.failed(name, error)

        jobs.define_job(
            name,
            payload=Hold,
            handle=partial(_handle, name),
            retry=Retry(attempts=0),
            on_failure=on_failure,
            **flow,
        )
    return jobs


def _handle(name: str, payload: Hold, ctx: Store) -> None:
    ctx.run(name, payload)


_store: Store | None = None


def create_context() -> Store:
    """The context factory of the worker processes (one `Store` per process)."""
    global _store
    if _store is None:
        _store = Store(os.environ["FLOW_APP_STORE"], os.environ["FLOW_APP_SUFFIX"])
    return _store


jobs = make_jobs(os.environ.get("FLOW_APP_SUFFIX", "local"))
