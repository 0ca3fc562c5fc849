"""What durable steps cost (issue 29), as rows of `python -m benchmarks --only steps`.

- `steps.redis`: runs of a 50-step job through the core's engine with its steps kept in Redis
  (`RedisStepStore` on the run's `redis-server`), per completed step, against one raw redis-py
  `HSET` per step to the same server. The job's handler and each step function do nothing, so
  the row is the engine and the store; a completed step is one round trip (`HSETNX` and `HGET`
  in one transaction), and each run adds one read, one counter write and one expiry, shared by
  its 50 steps. Target: a step costs at most 2x the raw write (ratio >= 0.5).
- `steps.postgresql` (full runs, where a PostgreSQL can be started): the same with
  `SqlStepStore` against one raw `INSERT ... ON CONFLICT DO NOTHING` per step (psycopg,
  autocommit, the same table). Target: ratio >= 0.5.
- `steps.sleepers.<backend>`: N runs dispatched at once, each sleeping 10 s (`step.sleep`),
  on one worker process with 2 threads (Dramatiq on the run's Redis; Celery on Redis with
  kombu's transport, its default): the sleep asked against the longest time from a run's
  dispatch to its resume (the worker's start included). A sleeping run holds no worker
  thread, so 1,000 of them resume on 2 threads within 15 s of their dispatch: >= 0.67 (10 s
  asked / 15 s). Smoke runs: 20 runs sleeping 1 s.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from jobs_core import JobRegistry, Payload, StepsSync
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.steps.redis_store import RedisStepStore

from .config import Config
from .processes import PYTHON, WorkerProcess
from .results import Row, compare
from .scenario import Env
from .timing import interleave

STEPS = 50
SLEEPERS = {"smoke": (20, 1.0), "quick": (200, 10.0), "full": (1_000, 10.0)}
"""Runs and seconds of sleep of the sleepers rows, per mode."""
SLEEPER_TARGET = 15.0

jobs = JobRegistry[Any]()


class Run(Payload):
    n: int


def _nothing(i: int) -> int:
    return i


@jobs.job("bench.steps")
def fifty(run: Run, ctx: None, step: StepsSync) -> None:
    for i in range(STEPS):
        step.run(f"s{i}", _nothing, i)


def rows(config: Config) -> list[str]:
    names = ["steps.redis"]
    if _with_postgres(config):
        names.append("steps.postgresql")
    return names + [f"steps.sleepers.{backend}" for backend in ("dramatiq", "celery")]


def _with_postgres(config: Config) -> bool:
    from .outbox_bench import _with_postgres as with_postgres

    return with_postgres(config)


def _engine_side(dispatcher: InlineDispatcher) -> Callable[[int], float]:
    """`count` steps, as runs of the 50-step job."""

    def side(count: int) -> float:
        runs = max(1, count // STEPS)
        start = time.perf_counter()
        for n in range(runs):
            dispatcher.dispatch_sync(fifty, {"n": n})
        return (time.perf_counter() - start) * count / (runs * STEPS)

    return side


def redis_row(env: Env) -> Row:
    client = env.redis_client()
    dispatcher = InlineDispatcher(raise_on_failure=True)
    dispatcher.instrumentation = None
    dispatcher.steps = RedisStepStore(client, prefix=f"bench:steps:{uuid.uuid4().hex[:6]}:")
    runs = iter(range(10**9))

    def raw(count: int) -> float:
        key = f"bench:raw:{next(runs)}"
        start = time.perf_counter()
        for i in range(count):
            client.hset(key, f"s{i}", "1")
        elapsed = time.perf_counter() - start
        client.delete(key)
        return elapsed

    n = env.config.small_n * 2
    env.log(f"steps: redis, {n:,} steps x {env.config.rounds}")
    timings = interleave(
        {"steps": _engine_side(dispatcher), "raw": raw},
        n,
        env.config.rounds,
        warmup_n=STEPS * 2,
        progress=env.log,
    )
    client.close()
    return compare(
        "steps.redis",
        f"completed steps/s of a {STEPS}-step job on the core's engine, steps kept in Redis, vs "
        "raw redis-py HSET/s to the same server",
        timings,
        "steps",
        "raw",
        target=0.5,
        labels=("", "HSET"),
    )


def postgres_row(env: Env) -> Row:
    import sqlalchemy

    from jobs_core.steps.sql_store import SqlStepStore
    from tests.support.postgres_server import Postgres

    pg = Postgres()
    url = pg.new_database()
    engine = sqlalchemy.create_engine(url)
    store = SqlStepStore(engine)
    store.create_table()
    dispatcher = InlineDispatcher(raise_on_failure=True)
    dispatcher.instrumentation = None
    dispatcher.steps = store
    raw_connection: Any = engine.raw_connection()
    raw_connection.driver_connection.autocommit = True
    cursor = raw_connection.cursor()
    runs = iter(range(10**9))

    def raw(count: int) -> float:
        run_id = f"raw-{next(runs)}"
        start = time.perf_counter()
        for i in range(count):
            cursor.execute(
                "INSERT INTO jobs_steps (run_id, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (run_id, f"s:{i}", "1"),
            )
        return time.perf_counter() - start

    n = env.config.small_n
    env.log(f"steps: postgresql, {n:,} steps x {env.config.rounds}")
    try:
        timings = interleave(
            {"steps": _engine_side(dispatcher), "raw": raw},
            n,
            env.config.rounds,
            warmup_n=STEPS * 2,
            progress=env.log,
        )
    finally:
        cursor.close()
        raw_connection.close()
        engine.dispose()
        pg.close()
    return compare(
        "steps.postgresql",
        f"completed steps/s of a {STEPS}-step job on the core's engine, steps kept in "
        "PostgreSQL (SQLAlchemy), vs raw psycopg INSERT ... ON CONFLICT DO NOTHING/s",
        timings,
        "steps",
        "raw",
        target=0.5,
        labels=("", "INSERT"),
    )


def sleepers_row(env: Env, backend: str) -> Row:
    import redis

    count, seconds = SLEEPERS[env.config.mode]
    queue = f"bench-sleep-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(env.redis_url)
    results = f"bench:sleepers:{queue}"
    worker_env = {
        "JOBS_BACKEND": backend,
        "JOBS_BROKER_URL": env.redis_url,
        "JOBS_QUEUE": queue,
        "BENCH_SLEEPERS_KEY": results,
        "BENCH_SLEEP_SECONDS": str(seconds),
    }
    threads = ["--threads", "2"] if backend == "dramatiq" else ["--pool", "threads"]
    if backend == "celery":
        threads += ["--concurrency", "2"]
    command = [PYTHON, "-m", "jobs_core", "worker", "benchmarks.sleepers:jobs", "--", *threads]
    from jobs_core import JobsSettings, create_dispatcher

    from .sleepers import nap

    env.log(f"steps: {count} runs sleeping {seconds:.0f} s on {backend}, 2 threads")
    with WorkerProcess(command, worker_env) as worker:
        settings = JobsSettings(backend=backend, broker_url=env.redis_url, queue=queue)
        dispatcher: Any = create_dispatcher(settings=settings)
        sent_at = time.time()
        dispatcher.dispatch_many_sync([(nap, {"n": n, "sent_at": sent_at}) for n in range(count)])
        dispatcher.close()
        deadline = time.monotonic() + seconds + 120
        while client.hlen(results) < count and time.monotonic() < deadline:
            if not worker.alive():
                raise RuntimeError(f"the {backend} worker died: {worker.output()}")
            time.sleep(0.2)
        resumed = [float(v) for v in client.hvals(results)]
    client.delete(results)
    client.close()
    if len(resumed) < count:
        raise RuntimeError(f"{backend}: {len(resumed)} of {count} sleepers resumed")
    longest = max(resumed)
    return Row.of(
        [seconds / longest],
        id=f"steps.sleepers.{backend}",
        compares=f"{count} runs dispatched at once, each sleeping {seconds:.0f} s, on one "
        f"{backend} worker process with 2 threads: the sleep asked vs the longest time from "
        "dispatch to resume",
        ours=f"all resumed within {longest:.1f} s",
        baseline=f"{seconds:.0f} s asked",
        n=count,
        target=seconds / SLEEPER_TARGET if seconds >= 10 else None,
        figures={"longest_resume_s": longest},
        samples={"resume_s": sorted(resumed)},
    )


def run(env: Env) -> list[Row]:
    found = [redis_row(env)]
    if _with_postgres(env.config):
        found.append(postgres_row(env))
    found += [sleepers_row(env, backend) for backend in ("dramatiq", "celery")]
    return found
