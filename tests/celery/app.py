"""The test app the Celery worker subprocesses run (C20, C21, worker CLI).

Each job records its start (`HSET started n pid`, `RPUSH starts n:pid:time`) and its completion
(`SADD done n`, `HINCRBY completions n 1`) in a "store" Redis, apart from the broker, so that
restarting the broker keeps the record. `JOBS_BROKER_URL`, `JOBS_QUEUE` and
`CELERY_TEST_STORE_URL` come from the environment, and so does `JOBS_CELERY_TRANSPORT`. The
app is what a user gets: the adapter's defaults, nothing tuned for the tests (except
`CELERY_TEST_STOCK_KOMBU`, below).
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from functools import lru_cache
from typing import Any

import redis
from pydantic import BaseModel

from jobs_core import JobRegistry, Retry, RetryLater
from jobs_core.backends.celery import create_celery_app

STARTED = "celery-test:started"
STARTS = "celery-test:starts"
DONE = "celery-test:done"
COMPLETIONS = "celery-test:completions"
RETRIED = "celery-test:retried"
GO = "celery-test:go"
RETRYING = "celery-test:retrying"

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
    pipe = ctx.pipeline(transaction=False)
    pipe.hset(STARTED, str(payload.n), os.getpid())
    pipe.rpush(STARTS, f"{payload.n}:{os.getpid()}:{time.time():.3f}")
    pipe.execute()
    if payload.seconds:
        time.sleep(payload.seconds)
    pipe = ctx.pipeline(transaction=False)
    pipe.sadd(DONE, payload.n)
    pipe.hincrby(COMPLETIONS, str(payload.n), 1)
    pipe.execute()


@jobs.job(
    "celery_test.retry_once",
    retry=Retry(attempts=2, min_backoff=timedelta(milliseconds=50)),
)
def retry_once(payload: Work, ctx: redis.Redis) -> None:
    """Its first run waits for the test's `GO` (the test stops the broker first), then asks for
    a retry, which the worker sends while the broker is away; the retry completes."""
    if ctx.hsetnx(RETRIED, str(payload.n), os.getpid()):
        deadline = time.monotonic() + 60
        while not ctx.exists(GO) and time.monotonic() < deadline:
            time.sleep(0.02)
        ctx.set(RETRYING, payload.n)
        raise RetryLater(timedelta(milliseconds=50))
    ctx.sadd(DONE, payload.n)


@jobs.job("celery_test.crash", retry=Retry(attempts=0))
def crash(payload: Work, ctx: redis.Redis) -> None:
    """Kills the process that runs it, every time: a poison message (prefork pool: the child
    dies, Celery requeues the message, RabbitMQ counts the delivery)."""
    ctx.hincrby(COMPLETIONS, f"crash-{payload.n}", 1)
    os.kill(os.getpid(), signal.SIGKILL)


celery_app = create_celery_app(
    jobs,
    context=create_context,
    delivery_limit=int(os.environ.get("CELERY_TEST_DELIVERY_LIMIT", "20")),
)
if os.environ.get("CELERY_TEST_STOCK_KOMBU"):
    # The stock-redis baseline of tests/celery/runs.py: kombu's own transport with a 3 s
    # visibility timeout, so that a killed worker's jobs come back within the run at all.
    celery_app.conf.broker_transport_options.update(
        visibility_timeout=3, unacked_restore_interval=1, unacked_restore_throttle=1
    )
"""For the native CLI: `celery -A tests.celery.app:celery_app worker`."""
