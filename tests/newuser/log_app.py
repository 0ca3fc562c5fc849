"""The jobs of the worker-logs test (item 7): one that gives up at once, one retried once, and
one limited to a single run at a time, whose second run is deferred by the limit.

Each records what happened in a "store" Redis (`NEWUSER_STORE_URL`), apart from the broker."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from functools import lru_cache

import redis
from pydantic import BaseModel

from jobs_core import Concurrency, JobRegistry, PermanentError, Retry, RetryLater

jobs = JobRegistry()


class Step(BaseModel):
    n: int


@lru_cache(maxsize=1)
def store() -> redis.Redis:
    return redis.Redis.from_url(os.environ["NEWUSER_STORE_URL"], socket_timeout=5)


@jobs.job("newuser.gives_up")
def gives_up(payload: Step) -> None:
    store().sadd("ran", f"gives_up-{payload.n}")
    raise PermanentError("the card was declined")


@jobs.job("newuser.retries_once", retry=Retry(attempts=2, min_backoff=timedelta(seconds=0.1)))
def retries_once(payload: Step) -> None:
    if store().incr(f"runs-{payload.n}") == 1:
        raise RetryLater(timedelta(milliseconds=100))
    store().sadd("done", f"retries_once-{payload.n}")


@jobs.job("newuser.limited", concurrency=Concurrency(limit=1))
def limited(payload: Step) -> None:
    store().sadd("running", f"limited-{payload.n}")
    deadline = time.monotonic() + 60  # the first run holds the slot until the test releases it
    while payload.n == 1 and not store().exists("release") and time.monotonic() < deadline:
        time.sleep(0.02)
    store().sadd("done", f"limited-{payload.n}")
