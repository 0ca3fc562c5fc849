"""The app of tests/events/test_fanout_kill.py: one event, three jobs on it; each run records
its start (the process group of the first worker to start it) and each completion in a test store (a Redis apart from
the broker), as `python -m jobs_core worker` runs it on Celery or Dramatiq (JOBS_BACKEND)."""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Any

import redis

from jobs_core import JobRegistry, Payload

STARTED = "fanout-kill:started"
DONE = "fanout-kill:done"
JOB_NAMES = ("fanout.email", "fanout.crm", "fanout.trial")

jobs = JobRegistry[Any]()


class Signup(Payload):
    n: int


signed_up = jobs.event("fanout/signup.completed", Signup)


@lru_cache(maxsize=1)
def create_context() -> redis.Redis:
    return redis.Redis.from_url(os.environ["FANOUT_KILL_STORE_URL"], socket_timeout=10)


def _run(store: redis.Redis, job: str, n: int) -> None:
    store.hsetnx(STARTED, f"{job}:{n}", os.getpgid(0))  # the worker's process group
    time.sleep(0.002)
    store.hincrby(DONE, f"{job}:{n}", 1)


for _name in JOB_NAMES:
    jobs.define_job(_name, handle=lambda s, store, _job=_name: _run(store, _job, s.n), on=signed_up)
