"""The job the soak's worker subprocesses run (Celery and Dramatiq, issue 7; Inngest, issue 18).

Started as `python -m jobs_core worker tests.soak.app:jobs --context
tests.soak.app:create_context` with `JOBS_BACKEND` celery or dramatiq. Each payload carries its
job number `n` and its plan (drawn from a seeded random generator by the test); the handler
follows the plan and records in a "store" Redis (a server apart from the broker, so that
restarting the broker keeps the record):

- `RUNS` (hash n -> count): every run that started, killed ones included;
- `DONE` (hash n -> count): every completion (HINCRBY: a job run twice to the end counts 2);
- `FAILED` (hash n -> count) and `FAILED_BY` (list of "n:worker:unix time"): every `on_failure`
  call; the worker is the process group the test started (its pid), which the `dramatiq`
  command's forked worker processes and Celery's prefork children share.

The store's URL comes from `CELERY_TEST_STORE_URL` (set by tests/celery/workers.py) or
`DURABILITY_REDIS_URL` (set by tests/dramatiq/workers.py): the soak reuses both helpers.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any, Literal

import redis
from pydantic import BaseModel

from jobs_core import JobRegistry, PermanentError, Retry, RetryLater

RUNS = "soak:runs"
DONE = "soak:done"
FAILED = "soak:failed"
FAILED_BY = "soak:failed_by"

ATTEMPTS = 2
RETRY = Retry(
    attempts=ATTEMPTS,
    min_backoff=timedelta(milliseconds=10),
    max_backoff=timedelta(milliseconds=50),
)
RETRY_LATER = timedelta(milliseconds=20)

INNGEST_ATTEMPTS = 6
"""`retry.attempts` of the job served on Inngest (`SOAK_INNGEST_ATTEMPTS` overrides it): room for
the kills beyond ATTEMPTS, since Inngest counts a call its worker never answered (cut by a kill,
or refused while no worker listens) as a failed attempt."""


def inngest_attempts() -> int:
    return int(os.environ.get("SOAK_INNGEST_ATTEMPTS", INNGEST_ATTEMPTS))


Kind = Literal["ok", "flaky", "later", "permanent", "exhaust"]
SUCCEEDS: frozenset[str] = frozenset({"ok", "flaky", "later"})
"""Plans that must complete: `flaky` fails `fails` (<= ATTEMPTS) times with an ordinary error,
`later` raises `RetryLater` `fails` times, then both succeed."""
GIVES_UP: frozenset[str] = frozenset({"permanent", "exhaust"})
"""Plans that must end in `on_failure`: `PermanentError` at once, or an ordinary error on every
one of the ATTEMPTS + 1 runs."""

jobs = JobRegistry[Any]()


class Plan(BaseModel):
    n: int
    kind: Kind
    fails: int = 0
    seconds: float = 0.0


class SoakError(Exception):
    """The ordinary (retryable) error a planned failure raises."""


_client: redis.Redis | None = None


def create_context() -> redis.Redis:
    """The store client, one per worker process (its pool is shared by the worker threads)."""
    global _client
    if _client is None:
        url = os.environ.get("CELERY_TEST_STORE_URL") or os.environ["DURABILITY_REDIS_URL"]
        _client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    return _client


def record_failure(error: BaseException, payload: Any, ctx: redis.Redis) -> None:
    n = payload.n if isinstance(payload, Plan) else payload.get("n")
    pipe = ctx.pipeline(transaction=False)
    pipe.hincrby(FAILED, str(n), 1)
    pipe.rpush(FAILED_BY, f"{n}:{os.getpgid(0)}:{time.time():.3f}")
    pipe.execute()


@jobs.job("soak.work", retry=RETRY, on_failure=record_failure)
def work(payload: Plan, ctx: redis.Redis) -> None:
    # This run's number, killed runs included: a run never counts for less than the
    # backend's attempt number, so a `flaky` or `later` job always has a retry left.
    run = int(ctx.hincrby(RUNS, str(payload.n), 1))
    if payload.seconds:
        time.sleep(payload.seconds)
    if payload.kind == "permanent":
        raise PermanentError(f"job {payload.n}: permanent")
    if payload.kind == "exhaust":
        raise SoakError(f"job {payload.n}: fails on every run (run {run})")
    if run <= payload.fails:
        if payload.kind == "later":
            raise RetryLater(RETRY_LATER)
        raise SoakError(f"job {payload.n}: fails on run {run} of {payload.fails + 1}")
    ctx.hincrby(DONE, str(payload.n), 1)
