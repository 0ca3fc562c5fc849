"""The sleeping runs of the `steps.sleepers` rows (benchmarks/steps_bench.py), for the worker
process: each run sleeps (`step.sleep`) and records how long after its dispatch it resumed."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from functools import lru_cache
from typing import Any

import redis

from jobs_core import JobRegistry, Payload, Steps

jobs = JobRegistry[Any]()


class Nap(Payload):
    n: int
    sent_at: float


@lru_cache(maxsize=1)
def _results() -> redis.Redis:
    return redis.Redis.from_url(os.environ["JOBS_BROKER_URL"])


@jobs.job("bench.nap")
async def nap(payload: Nap, ctx: None, step: Steps) -> None:
    await step.sleep("nap", timedelta(seconds=float(os.environ["BENCH_SLEEP_SECONDS"])))
    resumed = time.time() - payload.sent_at
    _results().hset(os.environ["BENCH_SLEEPERS_KEY"], str(payload.n), f"{resumed:.3f}")
