"""The app of tests/steps/test_kill.py: a five-step job whose steps record every run in a test
store (a Redis apart from the broker), as `python -m jobs_core worker` runs it on Celery or
Dramatiq (JOBS_BACKEND). Job 0's step 3 waits in its first run until the worker is killed."""

from __future__ import annotations

import os
import time
import uuid
from functools import lru_cache
from typing import Any

import redis

from jobs_core import JobRegistry, Payload, Retry, StepsSync

RUNS = "steps-kill:runs:{n}:{i}"
"""A list per (job, step): the token of each run of the step, in order."""
DONE = "steps-kill:done"
STEP_SECONDS = 0.005

jobs = JobRegistry[Any]()


class Order(Payload):
    n: int


@lru_cache(maxsize=1)
def create_context() -> redis.Redis:
    return redis.Redis.from_url(os.environ["STEPS_KILL_STORE_URL"], socket_timeout=10)


def _step(store: redis.Redis, n: int, i: int) -> str:
    """One run of step `i` of job `n`: its token, recorded; the token is the step's value."""
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    runs = store.rpush(RUNS.format(n=n, i=i), token)
    if n == 0 and i == 3 and runs == 1:  # the first run of job 0's step 3: killed in here
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(STEP_SECONDS)
    return token


@jobs.job("steps_kill.five", retry=Retry(attempts=3))
def five(order: Order, store: redis.Redis, step: StepsSync) -> None:
    tokens = [step.run(f"step{i}", _step, store, order.n, i) for i in range(1, 6)]
    store.hset(DONE, str(order.n), ",".join(tokens))
