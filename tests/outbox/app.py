"""The jobs the outbox tests relay to a real Dramatiq worker (and in-process relays).

Each run records in a Redis "store" (`DURABILITY_REDIS_URL`, apart from the broker) how many
times it started for its number, so a test can see that every job ran exactly once.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import redis
from pydantic import BaseModel

from jobs_core import JobRegistry, Retry

RUNS = "outbox:runs"
"""A hash: job number -> how many times the job ran."""

jobs = JobRegistry[Any]()


class Charge(BaseModel):
    n: int


@jobs.job("outbox.charge", retry=Retry(attempts=3, min_backoff=timedelta(milliseconds=100)))
def charge(payload: Charge, ctx: redis.Redis) -> None:
    ctx.hincrby(RUNS, str(payload.n), 1)


_client: redis.Redis | None = None


def create_context() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["DURABILITY_REDIS_URL"], socket_timeout=10)
    return _client


def runs(client: redis.Redis) -> dict[int, int]:
    return {int(k): int(v) for k, v in client.hgetall(RUNS).items()}  # type: ignore[union-attr]
