"""Celery: jobs_core's dispatcher and worker against a plain Celery app and worker.

Baselines, all on a plain app with JSON and ignored results (`plain_celery.make_app`):
`app.send_task(name, args=(payload,), queue=q)` for one job; a Redis `SET NX EX` of the key
then `send_task` for a keyed one; `send_task` for each job inside kombu's `producer.batch()`
(one pipeline) for many; `celery -A benchmarks.plain_celery:app worker` for the worker side.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from jobs_core.backends.celery import CeleryDispatcher

from . import dispatch_suite, worker_suite
from .config import SMALL, Config
from .dispatch_suite import Baseline, DispatchKit, Payload
from .jobs import JOB_NAME, PAYLOADS, noop
from .plain_celery import make_app
from .processes import JOBS_CORE_WORKER, PYTHON
from .results import Row
from .scenario import Env
from .worker_suite import WorkerKit, WorkerSide

BACKEND = "celery"
KEY_TTL = 24 * 3600
WORKER_OPTIONS = [
    "--pool",
    "threads",
    "--concurrency",
    "8",
    "--without-mingle",
    "--without-gossip",
    "--without-heartbeat",
]
"""The same for both workers; neither sets a log level, so each logs as its command does."""
OPT_IN = "reliable_redis"
"""The idle row of the opt-in reliable Redis transport (`JOBS_CELERY_TRANSPORT`)."""
IDLE_PAUSE = 0.2
"""Seconds idle before each job of the idle rows: an idle Celery consumer blocks in Redis
(BRPOP, or the reliable transport's BLMOVE), and polls every 0.1 s at most (the reliable
transport before its first heartbeat)."""


def rows(config: Config) -> list[str]:
    return [
        *dispatch_suite.row_ids(BACKEND, ["kombu_batch"]),
        *worker_suite.row_ids(BACKEND, OPT_IN),
    ]


def kombu_batch(app: Any, queue: str) -> Callable[[Sequence[Payload]], None]:
    """`send_task` for each payload inside kombu's `producer.batch()`: one Redis pipeline."""

    def send(payloads: Sequence[Payload]) -> None:
        with app.producer_or_acquire() as producer, producer.batch():
            for payload in payloads:
                app.send_task(JOB_NAME, args=(payload,), queue=queue, producer=producer)

    return send


def run(env: Env) -> list[Row]:
    url, client = env.redis_url, env.redis_client()
    queue = f"bench-celery-{uuid.uuid4().hex[:8]}"
    dispatcher = CeleryDispatcher(url, queue)
    plain = make_app(url, queue)

    def keyed(payload: Payload, key: str) -> None:
        if client.set(f"bench:user-key:{key}", "1", nx=True, ex=KEY_TTL):
            plain.send_task(JOB_NAME, args=(payload,), queue=queue)

    kit = DispatchKit(
        BACKEND,
        dispatcher,
        public=Baseline(
            "send_task",
            "app.send_task(name, args=(payload,), queue=q) on a plain Celery app",
            lambda payload: plain.send_task(JOB_NAME, args=(payload,), queue=queue),
        ),
        keyed=Baseline(
            "SET NX+send_task",
            "a Redis SET NX EX of the key, then app.send_task (two round trips)",
            keyed,
        ),
        batches=[
            Baseline(
                "kombu_batch",
                "app.send_task for each job inside kombu's producer.batch() (one pipeline)",
                kombu_batch(plain, queue),
                target=0.90,
            )
        ],
        clear=lambda: client.delete(queue),
        dispatch_targets={"200B": 0.90, "10KB": 0.90, "200KB": 0.95},
        keyed_target=0.90,
        single_target=5.0,
    )
    try:
        return dispatch_suite.all_rows(env, kit) + worker_suite.worker_rows(env, worker_kit(env))
    finally:
        dispatcher.close()
        plain.close()
        client.delete(queue)
        client.close()


def worker_kit(env: Env) -> WorkerKit:
    """jobs_core's `python -m jobs_core worker` (Celery backend) vs a plain `celery worker`;
    both staged through a `<queue>.staging` list that one RENAME makes the worker's queue."""
    url, client = env.redis_url, env.redis_client()
    tag = uuid.uuid4().hex[:8]
    ours_queue, plain_queue = f"bench-celery-ours-{tag}", f"bench-celery-plain-{tag}"
    payload = PAYLOADS[SMALL]
    ours = CeleryDispatcher(url, ours_queue)
    ours_stager = CeleryDispatcher(url, f"{ours_queue}.staging")
    plain = make_app(url, plain_queue)
    plain_batch = kombu_batch(plain, f"{plain_queue}.staging")

    def release(queue: str) -> Callable[[], object]:
        return lambda: client.rename(f"{queue}.staging", queue)

    reliable_queue = f"bench-celery-reliable-{tag}"
    reliable = CeleryDispatcher(url, reliable_queue)
    ours_env = {"JOBS_BACKEND": "celery", "JOBS_BROKER_URL": url, "JOBS_QUEUE": ours_queue}
    return WorkerKit(
        BACKEND,
        ours=WorkerSide(
            "`python -m jobs_core worker` (JOBS_BACKEND=celery)",
            [*JOBS_CORE_WORKER, "--", *WORKER_OPTIONS],
            ours_env,
            stage=lambda n: ours_stager.dispatch_many_sync([(noop, payload)] * n),
            release=release(ours_queue),
            send=lambda: ours.dispatch_sync(noop, payload),
        ),
        opt_in=(
            OPT_IN,
            WorkerSide(
                "`python -m jobs_core worker` (JOBS_CELERY_TRANSPORT=reliable-redis)",
                [*JOBS_CORE_WORKER, "--", *WORKER_OPTIONS],
                {
                    **ours_env,
                    "JOBS_QUEUE": reliable_queue,
                    "JOBS_CELERY_TRANSPORT": "reliable-redis",
                },
                stage=lambda n: None,
                release=lambda: None,
                send=lambda: reliable.dispatch_sync(noop, payload),
            ),
        ),
        plain=WorkerSide(
            "`celery -A benchmarks.plain_celery:app worker` (a plain task)",
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "benchmarks.plain_celery:app",
                "worker",
                *WORKER_OPTIONS,
            ],
            {"BENCH_BROKER_URL": url, "BENCH_QUEUE": plain_queue},
            stage=lambda n: plain_batch([payload] * n),
            release=release(plain_queue),
            send=lambda: plain.send_task(JOB_NAME, args=(payload,), queue=plain_queue),
        ),
        describe="threads pool, concurrency 8, acks_late and prefetch 1 on both, each "
        "command's default logging (jobs_core's: INFO; celery worker's: WARNING)",
        worker_target=0.95,
        e2e_target=0.90,
        idle_pause=IDLE_PAUSE,
        closers=[ours.close, ours_stager.close, reliable.close, plain.close, client.close],
    )
