"""The test app the Celery worker subprocesses run (C20, C21, worker CLI).

Each job records its start (`HSET started n pid`) and its completion (`SADD done n`) in a
"store" Redis, apart from the broker, so that restarting the broker keeps the record.
`JOBS_BROKER_URL`, `JOBS_QUEUE` and `CELERY_TEST_STORE_URL` come from the environment.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from functools import lru_cache
from typing import Any

import redis
from pydantic import BaseModel

from jobs_core import JobRegistry, Retry
from jobs_core.backends.celery import create_celery_app

STARTED = "celery-test:started"
DONE = "celery-test:done"

jobs = JobRegistry[Any]()


class Work(BaseModel):
    n: int
    seconds: float = 0.0


@lru_cache(maxsize=1)
def _store() -> redis.Redis:
    return redis.Redis.from_url(
        os.environ["CELERY_TEST_STORE_URL"], socket_connect_timeout=5, socket_timeout=5
    )


def create_context() -> redis.Redis:
    """The context factory: the store client (one per process)."""
    return _store()


@jobs.job(
    "celery_test.work",
    retry=Retry(
        attempts=3, min_backoff=timedelta(milliseconds=50), max_backoff=timedelta(seconds=1)
    ),
)
def work(payload: Work, ctx: redis.Redis) -> None:
    ctx.hset(STARTED, str(payload.n), os.getpid())
    if payload.seconds:
        time.sleep(payload.seconds)
    ctx.sadd(DONE, payload.n)


celery_app = create_celery_app(
    jobs,
    context=create_context,
    visibility_timeout=float(os.environ.get("CELERY_TEST_VISIBILITY_TIMEOUT", "3")),
    broker_transport_options={"unacked_restore_interval": 1, "unacked_restore_throttle": 1},
)
"""For the native CLI: `celery -A tests.celery.app:celery_app worker`."""
