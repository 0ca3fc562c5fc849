"""The Dramatiq backend's harness: a real Redis broker and a real in-process `dramatiq.Worker`.

Each session gets its own broker object and a unique queue (Dramatiq brokers keep their actor
declarations, and a shared queue would let one test's messages reach another's worker); the
worker runs the test's registry through `jobs_core.backends.dramatiq.register_actors`, exactly as a
production worker does. On exit the worker stops (bounded), the broker and dispatcher close,
and the session's keys are deleted.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import QueueJoinTimeout

from jobs_core import JobRegistry
from jobs_core.backends.dramatiq import (
    DramatiqDispatcher,
    close_broker,
    make_worker_broker,
    register_actors,
)
from jobs_core.backends.dramatiq.broker import NAMESPACE
from jobs_core.instrumentation import Instrumentation

from .harness import DRAIN_TIMEOUT
from .harness_redis import RedisBrokerHarness, RedisSession, forget_queue

WORKER_THREADS = 4
WORKER_TIMEOUT_MS = 50
STOP_TIMEOUT_MS = 5_000


def join_all(broker: Any, worker: Any, queue: str, timeout: float) -> None:
    """Wait (`timeout` seconds at most) until `broker` holds nothing of `queue` and `worker`
    nothing in hand: Dramatiq's drain, `broker.join(queue)` (the queue, its delay queue, and
    on Redis the worker's unacked sets too) then `worker.join()`."""
    millis = int(timeout * 1000)
    try:
        if isinstance(broker, StubBroker):
            broker.join(queue, timeout=millis, fail_fast=False)  # a give-up is dead-lettered
        else:
            broker.join(queue, interval=10, timeout=millis)
    except QueueJoinTimeout:
        raise AssertionError(f"dramatiq: queue {queue!r} still busy after {timeout}s") from None
    worker.join()


def registry_worker(
    broker: Any,
    queue: str,
    registry: JobRegistry[Any],
    context: Any,
    instrumentation: Instrumentation,
) -> dramatiq.Worker:
    """A (not started) `dramatiq.Worker` on `broker` for the test's `registry`, its jobs
    declared as actors of `queue` by `register_actors`, exactly as a production worker does;
    `WORKER_THREADS` threads and `WORKER_TIMEOUT_MS` idle waits, for a prompt stop."""
    broker.declare_queue(queue)
    register_actors(
        registry, context=context, broker=broker, instrumentation=instrumentation, queue=queue
    )
    return dramatiq.Worker(broker, worker_threads=WORKER_THREADS, worker_timeout=WORKER_TIMEOUT_MS)


class DramatiqWorkerSession:
    """What the Dramatiq harnesses' sessions share: a `dramatiq.Worker` on `broker`, for the
    session's `queue`, started by `start`; `close` stops it (bounded by `STOP_TIMEOUT_MS`) and
    then releases the rest (`release`, the subclass's), whatever happened. Raw messages and the
    drain are Dramatiq's own, on any broker."""

    broker: Any
    worker: dramatiq.Worker
    queue: str

    def start(self) -> None:
        self.worker.start()

    def close(self) -> None:
        try:
            self.worker.stop(timeout=STOP_TIMEOUT_MS)
        finally:
            self.release()

    def release(self) -> None:
        """Close the broker and whatever else the session made, once the worker stopped."""
        raise NotImplementedError

    # -- BackendSession -------------------------------------------------------------------

    def send_raw(self, job_name: str, data: Any) -> None:
        message: Any = dramatiq.Message(
            queue_name=self.queue, actor_name=job_name, args=(data,), kwargs={}, options={}
        )
        self.broker.enqueue(message)

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Dramatiq's own drain: `broker.join` until the queue and its delay queue (and on
        Redis this worker's unacked sets: a retry is enqueued before the message it replaces
        is acked, so a job that goes on is never out of them) are empty, then `worker.join()`
        for what the worker holds in memory."""
        join_all(self.broker, self.worker, self.queue, timeout)


class DramatiqSession(DramatiqWorkerSession, RedisSession):
    dispatcher_type = DramatiqDispatcher
    enqueue_command = "hset"  # Dramatiq's enqueue script runs one HSET per message

    def serve(
        self, registry: JobRegistry[Any], context: Any, instrumentation: Instrumentation
    ) -> None:
        self.broker = make_worker_broker(self.url)
        self.worker = registry_worker(self.broker, self.queue, registry, context, instrumentation)

    def release(self) -> None:
        close_broker(self.broker)
        self.dispatcher.close()
        forget_queue(self.client, f"{NAMESPACE}:*{self.queue}*")

    def dead_letters(self) -> list[str]:
        decode = dramatiq.get_encoder().decode
        raw: list[bytes] = self.client.hvals(f"{NAMESPACE}:{self.queue}.XQ.msgs")  # type: ignore[assignment]
        return [str(decode(data)["actor_name"]) for data in raw]


class DramatiqHarness(RedisBrokerHarness):
    name = "dramatiq"
    redis_db = 2
    session_type = DramatiqSession
    dispatcher_type = DramatiqDispatcher


def make_harness(resources: Any) -> DramatiqHarness:
    return DramatiqHarness(resources)
