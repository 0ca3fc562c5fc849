"""The jobs a subprocess Dramatiq worker runs in the durability tests (C20, C21).

Started as `python -m jobs_core worker tests.dramatiq.app:jobs --context
tests.dramatiq.app:create_context` with `JOBS_BACKEND=dramatiq`. Each job records in a Redis
(`DURABILITY_REDIS_URL`, a server apart from the broker, so that a broker restart does not touch
the record) that it started and, at its end, that it completed.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import redis
from pydantic import BaseModel

from jobs_core import JobRegistry, Retry

STARTED = "durability:started"
"""A hash: job number -> how many times a run started."""
DONE = "durability:done"
"""A set of job numbers whose run completed."""

jobs = JobRegistry[Any]()


class Work(BaseModel):
    n: int
    seconds: float = 0.02


@jobs.job("durability.work", retry=Retry(attempts=3, min_backoff=timedelta(milliseconds=100)))
def work(payload: Work, ctx: redis.Redis) -> None:
    ctx.hincrby(STARTED, str(payload.n), 1)
    time.sleep(payload.seconds)
    ctx.sadd(DONE, payload.n)


_client: redis.Redis | None = None


def create_context() -> redis.Redis:
    """One Redis client per worker process (a pool shared by the worker threads)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(
            os.environ["DURABILITY_REDIS_URL"],
            socket_connect_timeout=5,
            socket_timeout=10,
        )
    return _client
