"""Dramatiq: `DramatiqDispatcher` against a plain Dramatiq actor's `send` of the same message.

The raw side is what an app would write without jobs_core: a `RedisBroker(url=...)` with
Dramatiq's default middleware, an actor declared on it, and `actor.send(payload)`.
"""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker as _RedisBroker

from jobs_core.backends.dramatiq import DramatiqDispatcher, close_broker

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

RedisBroker: Any = _RedisBroker  # untyped constructor

BACKEND = "dramatiq"
DISPATCH_TARGET = 0.90
BATCH_TARGET = 5.0
E2E_TARGET = 0.90


def _noop(data: Any) -> None:
    """The raw actors' body on the producer side (never run there)."""


def raw_actor(broker: Any, name: str, queue: str) -> Any:
    """A plain actor declared on the producer's broker, as an app would declare it."""
    return dramatiq.actor(actor_name=name, queue_name=queue, broker=broker)(_noop)


def queue_keys(queue: str) -> tuple[str, str]:
    """The Redis keys a Dramatiq queue's messages live in (the list of ids, the messages)."""
    return f"dramatiq:{queue}", f"dramatiq:{queue}.msgs"


def run(env: Env) -> list[Result]:
    config = env.config
    url = env.redis_url
    client = env.redis_client()
    queue = f"bench-dramatiq-{uuid.uuid4().hex[:8]}"
    keys = queue_keys(queue)
    ours_dispatcher = DramatiqDispatcher(url, queue)
    raw_broker = RedisBroker(url=url)
    actor = raw_actor(raw_broker, JOB_NAME, queue)
    results: list[Result] = []

    def clear() -> None:
        client.delete(*keys)

    def ours(n: int) -> float:
        dispatch = ours_dispatcher.dispatch_sync
        return timed(n, lambda _: dispatch(noop, SAMPLE), after=clear)

    def raw(n: int) -> float:
        send = actor.send
        return timed(n, lambda _: send(SAMPLE), after=clear)

    def many(n: int) -> float:
        items = [(noop, SAMPLE)] * n
        return timed(1, lambda _: ours_dispatcher.dispatch_many_sync(items), after=clear)

    try:
        # The exact message bytes Dramatiq stores for one of our jobs: what the floor LPUSHes.
        ours_dispatcher.dispatch_sync(noop, SAMPLE)
        [message] = client.hvals(keys[1])
        clear()

        env.log("dramatiq: dispatch overhead (+ LPUSH floor)")
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
                note="dispatch_sync vs actor.send(payload) on a default RedisBroker",
            )
        )
        results.append(floor_result(BACKEND, n, seconds))

        env.log("dramatiq: batch")
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

        results.append(_run_e2e(env, client, raw_broker))
    finally:
        ours_dispatcher.close()
        close_broker(raw_broker)
        client.delete(*keys)
        client.close()
    return results


def _run_e2e(env: Env, client: Any, raw_broker: Any) -> Result:
    config = env.config
    url = env.redis_url
    queue = f"bench-dramatiq-e2e-{uuid.uuid4().hex[:8]}"
    ours_key, raw_key = counter_keys(queue)
    dispatcher = DramatiqDispatcher(url, queue)
    actor = raw_actor(raw_broker, RAW_NAME, queue)
    worker = WorkerProcess([PYTHON, "-m", "benchmarks.dramatiq_worker", url, queue])
    env.log("dramatiq: end to end (one worker process, 8 threads)")
    try:
        worker.start()
        dispatch = dispatcher.dispatch_sync
        send = actor.send
        sides = {
            "ours": CounterSide(client, ours_key, lambda: dispatch(noop, SAMPLE), worker, BACKEND),
            "raw": CounterSide(client, raw_key, lambda: send(SAMPLE), worker, BACKEND),
        }
        n = config.e2e_n
        seconds = interleave(sides, n, config.rounds, warmup_n=config.warmup_n, progress=env.log)
    finally:
        worker.stop()
        dispatcher.close()
        client.delete(*queue_keys(queue), ours_key, raw_key)
    result = compare(
        "e2e",
        BACKEND,
        n,
        seconds,
        "ours",
        "raw",
        target=E2E_TARGET,
        note="first dispatch to last completion; jobs_core actor (run_job_sync) vs a plain "
        "actor, same worker process (8 threads, worker_timeout 100 ms)",
    )
    return add_worker_cpu(result, sides)
