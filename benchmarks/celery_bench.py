"""Celery: `CeleryDispatcher` against a plain Celery app's `send_task` of the same message.

The raw side is what an app would write without jobs_core: a Celery app with the broker URL,
JSON serialisation and ignored results, and `app.send_task(name, args=(payload,), queue=q)`.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery

from jobs_core.backends.celery import CeleryDispatcher

from .common import (
    PYTHON,
    CounterSide,
    Env,
    Result,
    WorkerProcess,
    add_worker_cpu,
    compare,
    floor_result,
    interleave,
    lpush_side,
    timed,
)
from .jobs import JOB_NAME, RAW_NAME, SAMPLE, counter_keys, noop

BACKEND = "celery"
DISPATCH_TARGET = 0.90
BATCH_TARGET = 5.0
E2E_TARGET = 0.90


def raw_app(broker_url: str, queue: str) -> Any:
    """A plain Celery producer app, configured as the docs suggest for JSON and no results."""
    app = Celery("bench.raw", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
    )
    return app


def run(env: Env) -> list[Result]:
    config = env.config
    url = env.redis_url
    client = env.redis_client()
    queue = f"bench-celery-{uuid.uuid4().hex[:8]}"
    ours_dispatcher = CeleryDispatcher(url, queue)
    plain = raw_app(url, queue)
    results: list[Result] = []

    def clear() -> None:
        client.delete(queue)

    def ours(n: int) -> float:
        dispatch = ours_dispatcher.dispatch_sync
        return timed(n, lambda _: dispatch(noop, SAMPLE), after=clear)

    def raw(n: int) -> float:
        send_task = plain.send_task
        args = (SAMPLE,)
        return timed(n, lambda _: send_task(JOB_NAME, args=args, queue=queue), after=clear)

    def many(n: int) -> float:
        items = [(noop, SAMPLE)] * n
        return timed(1, lambda _: ours_dispatcher.dispatch_many_sync(items), after=clear)

    try:
        # The exact bytes kombu pushes for one of our jobs: what the floor LPUSHes.
        ours_dispatcher.dispatch_sync(noop, SAMPLE)
        message: bytes = client.lindex(queue, 0)
        clear()

        env.log("celery: dispatch overhead (+ LPUSH floor)")
        n = config.dispatch_n
        seconds = interleave(
            {"ours": ours, "raw": raw, "lpush": lpush_side(client, f"{queue}-floor", message)},
            n,
            config.rounds,
            warmup_n=config.warmup_n,
            slices=config.dispatch_slices,
            progress=env.log,
        )
        results.append(
            compare(
                "dispatch",
                BACKEND,
                n,
                seconds,
                "ours",
                "raw",
                target=DISPATCH_TARGET,
                note="dispatch_sync vs app.send_task(name, args=(payload,), queue=q)",
            )
        )
        results.append(floor_result(BACKEND, n, seconds))

        env.log("celery: batch")
        n = config.batch_n
        seconds = interleave(
            {"many": many, "single": ours},
            n,
            config.rounds,
            warmup_n=config.warmup_n,
            progress=env.log,
        )
        results.append(
            compare(
                "batch",
                BACKEND,
                n,
                seconds,
                "many",
                "single",
                target=BATCH_TARGET,
                note="one dispatch_many_sync of n (one pipeline) vs n dispatch_sync",
            )
        )

        results.append(_run_e2e(env, client))
    finally:
        ours_dispatcher.close()
        plain.close()
        client.delete(queue)
        client.close()
    return results


def _run_e2e(env: Env, client: Any) -> Result:
    config = env.config
    url = env.redis_url
    queue = f"bench-celery-e2e-{uuid.uuid4().hex[:8]}"
    ours_key, raw_key = counter_keys(queue)
    dispatcher = CeleryDispatcher(url, queue)
    plain = raw_app(url, queue)
    worker = WorkerProcess([PYTHON, "-m", "benchmarks.celery_worker", url, queue])
    env.log("celery: end to end (one worker process, threads pool, concurrency 8)")
    try:
        worker.start()
        dispatch = dispatcher.dispatch_sync
        send_task = plain.send_task
        args = (SAMPLE,)
        sides = {
            "ours": CounterSide(client, ours_key, lambda: dispatch(noop, SAMPLE), worker, BACKEND),
            "raw": CounterSide(
                client,
                raw_key,
                lambda: send_task(RAW_NAME, args=args, queue=queue),
                worker,
                BACKEND,
            ),
        }
        n = config.e2e_n
        seconds = interleave(sides, n, config.rounds, warmup_n=config.warmup_n, progress=env.log)
    finally:
        worker.stop()
        dispatcher.close()
        plain.close()
        client.delete(queue, ours_key, raw_key)
    result = compare(
        "e2e",
        BACKEND,
        n,
        seconds,
        "ours",
        "raw",
        target=E2E_TARGET,
        note="first dispatch to last completion; jobs_core task (run_job_sync) vs a plain "
        "task, same worker process (threads x8, acks_late, prefetch 1)",
    )
    return add_worker_cpu(result, sides)
