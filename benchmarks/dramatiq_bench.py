"""Dramatiq: jobs_core's dispatcher and worker against a plain Dramatiq broker and worker.

Baselines: `actor.send(payload)` on a `RedisBroker(url=...)` with Dramatiq's default middleware
for one job; a Redis `SET NX EX` of the key then `actor.send` for a keyed one; for many,
`dramatiq.group(messages).run()` (Dramatiq's own primitive: one round trip per message) and the
pipelined alternative a user could write (a `RedisBroker` on a redis-py pipeline, whose enqueue
scripts then go in one round trip, as jobs_core's adapter does); `dramatiq
benchmarks.plain_dramatiq -p 1 -t 8` for the worker side.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker as _RedisBroker

from jobs_core.backends.dramatiq import DramatiqDispatcher, close_broker

from . import dispatch_suite, worker_suite
from .config import SMALL, Config
from .dispatch_suite import Baseline, DispatchKit, Payload
from .jobs import JOB_NAME, PAYLOADS, noop
from .processes import JOBS_CORE_WORKER, PYTHON
from .results import Row
from .scenario import Env
from .worker_suite import WorkerKit, WorkerSide

RedisBroker: Any = _RedisBroker  # untyped constructor

BACKEND = "dramatiq"
NAMESPACE = "dramatiq"
STAGING = "bench-staging"
"""The namespace jobs are staged in before one RENAME hands them to a worker."""
KEY_TTL = 24 * 3600
WORKER_ENV = {"dramatiq_worker_timeout": "100"}
"""Both workers poll an idle queue every 100 ms instead of 1 s (Dramatiq's setting, read by
both commands), so the e2e rows do not wait up to a second for a worker's idle back-off."""
IDLE_ENV = {"dramatiq_worker_timeout": "10"}
"""The idle row's setting, both workers restarted with it: an idle worker polls every 5-10 ms.
At 100 ms, when a job lands in the 0-100 ms poll cycle decides its latency (the same for both
sides) and the ratio of two medians of such latencies is noise; at 10 ms the latency is the
worker's own path from the queue to the completed job, which is what the row compares."""
IDLE_PAUSE = 0.1
"""Seconds idle before each job of the idle row: Dramatiq's back-off reaches the 10 ms poll
within ~20 ms of the last job."""


def rows(config: Config) -> list[str]:
    return [
        *dispatch_suite.row_ids(BACKEND, ["pipeline", "group"]),
        *worker_suite.row_ids(BACKEND),
    ]


def queue_keys(queue: str, namespace: str = NAMESPACE) -> tuple[str, str]:
    """The Redis keys of a Dramatiq queue: the list of message ids, the messages."""
    return f"{namespace}:{queue}", f"{namespace}:{queue}.msgs"


def pipelined(client: Any, like: Any, namespace: str = NAMESPACE) -> tuple[Any, Any]:
    """(pipeline, broker): a `RedisBroker` whose commands queue on a redis-py pipeline."""
    pipe = client.pipeline(transaction=False)
    broker = RedisBroker(client=pipe, middleware=[], namespace=namespace, maintenance_chance=0)
    broker.scripts["maxstack"] = like.scripts["maxstack"]  # a query: it cannot wait on a pipeline
    return pipe, broker


def run(env: Env) -> list[Row]:
    url, client = env.redis_url, env.redis_client()
    queue = f"bench-dramatiq-{uuid.uuid4().hex[:8]}"
    dispatcher = DramatiqDispatcher(url, queue)
    broker = RedisBroker(url=url)
    actor = dramatiq.actor(actor_name=JOB_NAME, queue_name=queue, broker=broker)(_never_run)

    def keyed(payload: Payload, key: str) -> None:
        if client.set(f"bench:user-key:{key}", "1", nx=True, ex=KEY_TTL):
            actor.send(payload)

    def group(payloads: Sequence[Payload]) -> None:
        dramatiq.group([actor.message(p) for p in payloads], broker=broker).run()

    def pipeline(payloads: Sequence[Payload]) -> None:
        pipe, batch = pipelined(client, broker)
        for payload in payloads:
            batch.enqueue(actor.message(payload))
        pipe.execute()

    kit = DispatchKit(
        BACKEND,
        dispatcher,
        public=Baseline(
            "actor.send",
            "actor.send(payload) on a RedisBroker(url=...) with Dramatiq's default middleware",
            actor.send,
        ),
        keyed=Baseline(
            "SET NX+actor.send",
            "a Redis SET NX EX of the key, then actor.send (two round trips)",
            keyed,
        ),
        batches=[
            Baseline(
                "pipeline",
                "the enqueue of each message on a RedisBroker over one redis-py pipeline",
                pipeline,
                target=0.90,
            ),
            Baseline("group", "dramatiq.group(messages).run() (a round trip per message)", group),
        ],
        clear=lambda: client.delete(*queue_keys(queue)),
        dispatch_targets={"200B": 0.90, "10KB": 0.90, "200KB": 0.95},
        keyed_target=0.90,
        single_target=5.0,
    )
    try:
        return dispatch_suite.all_rows(env, kit) + worker_suite.worker_rows(
            env, worker_kit(env, broker)
        )
    finally:
        dispatcher.close()
        close_broker(broker)
        client.delete(*queue_keys(queue))
        client.close()


def _never_run(data: Any) -> None:
    """The producer side's actor body (the producer never runs it)."""


def worker_kit(env: Env, like: Any) -> WorkerKit:
    """jobs_core's `python -m jobs_core worker` (Dramatiq backend) vs a plain `dramatiq`
    worker. Jobs are staged in the `bench-staging` namespace (the same message jobs_core's
    dispatcher builds: the payload as its one argument) and handed over by renaming both keys
    in one transaction."""
    url, client = env.redis_url, env.redis_client()
    tag = uuid.uuid4().hex[:8]
    ours_queue, plain_queue = f"bench-dramatiq-ours-{tag}", f"bench-dramatiq-plain-{tag}"
    payload = PAYLOADS[SMALL]
    ours = DramatiqDispatcher(url, ours_queue)
    plain_broker = RedisBroker(url=url)
    plain = dramatiq.actor(actor_name=JOB_NAME, queue_name=plain_queue, broker=plain_broker)(
        _never_run
    )

    def stage(queue: str) -> Callable[[int], None]:
        def put(n: int) -> None:
            pipe, staging = pipelined(client, plain_broker, STAGING)
            for _ in range(n):
                message: Any = dramatiq.Message(
                    queue_name=queue, actor_name=JOB_NAME, args=(payload,), kwargs={}, options={}
                )
                staging.enqueue(message)
            pipe.execute()

        return put

    def release(queue: str) -> Callable[[], None]:
        def hand_over() -> None:
            pipe = client.pipeline(transaction=True)
            for staged, live in zip(queue_keys(queue, STAGING), queue_keys(queue)):
                pipe.rename(staged, live)
            pipe.execute()

        return hand_over

    return WorkerKit(
        BACKEND,
        ours=WorkerSide(
            "`python -m jobs_core worker` (JOBS_BACKEND=dramatiq: `dramatiq -p 1 -t 8`)",
            JOBS_CORE_WORKER,
            {
                "JOBS_BACKEND": "dramatiq",
                "JOBS_BROKER_URL": url,
                "JOBS_QUEUE": ours_queue,
                **WORKER_ENV,
            },
            stage=stage(ours_queue),
            release=release(ours_queue),
            send=lambda: ours.dispatch_sync(noop, payload),
        ),
        plain=WorkerSide(
            "`dramatiq benchmarks.plain_dramatiq -p 1 -t 8` (a plain actor)",
            [PYTHON, "-m", "dramatiq", "benchmarks.plain_dramatiq", "-p", "1", "-t", "8"],
            {"BENCH_BROKER_URL": url, "BENCH_QUEUE": plain_queue, **WORKER_ENV},
            stage=stage(plain_queue),
            release=release(plain_queue),
            send=lambda: plain.send(payload),
        ),
        describe="one process, 8 threads, idle poll 100 ms on both, each command's default "
        "logging (both INFO: the dramatiq command's)",
        worker_target=0.95,
        e2e_target=0.90,
        idle_pause=IDLE_PAUSE,
        idle_env=IDLE_ENV,
        closers=[ours.close, lambda: close_broker(plain_broker), client.close],
    )
