"""Patches that keep Dramatiq's promises where Dramatiq 2.2's Redis broker alone would not.

`WorkerRedisBroker` is Dramatiq's `RedisBroker` for workers, with:

- a fetch that keeps back what cannot run. Upstream, `DecodeError` escapes the consumer and
  strands its prefetched batch; an id pushed without a body is skipped with an unnamed warning;
  a decodable message with a field of the wrong type or another queue's name stops a consumer
  or worker thread, or is acked under an id that is not its own: each stays in the acks set for
  as long as the worker lives. Here such an item is dead-lettered (`<queue>.XQ`; an id without
  a body only leaves the acks set), reported through the core with its id and queue, and the
  batch goes on. An idle consumer also looks for such ids every `IDLE_SWEEP_SECONDS`.
- a consumer that puts back what its predecessor stranded. Redis runs the fetch script (which
  marks messages as this worker's) even when its reply is lost, as when the broker restarts,
  and a consumer thread that restarts after a connection error drops its delayed messages from
  memory: both stay in this worker's acks set until the process dies. Each new consumer, before
  its first fetch, requeues the ids of that set that the worker does not hold.
- an enqueue that waits for the broker to come back. A retry is a message enqueued by the
  `Retries` middleware before the old one is acked; when that enqueue failed (the broker
  restarting), the old message was acked anyway and the job was lost. It tries again under the
  same id, and not at all if the lost attempt landed: a new id each time put the retry on the
  queue twice, and the job's last attempt and `on_failure` ran twice.

(What Dramatiq's log lines would show of payloads is fixed in `privacy.py`.)

Each patch has a test that fails without it (tests/poison, tests/dramatiq/test_durability.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name

from jobs_core.worker import BROKER_AWAY_SECONDS, JobWorker

from .consumer import HeldIds, SafeConsumer
from .poison import fault_of

logger = logging.getLogger("jobs_core.backends.dramatiq")

ENQUEUE_RETRY_SECONDS = BROKER_AWAY_SECONDS
"""How long a worker keeps trying to enqueue (a retry, a delayed job that is due) while the
broker cannot be reached, before it gives up on that enqueue (the core's setting)."""


IDLE_SWEEP_SECONDS = 30.0
"""How often an idle consumer looks for ids left in its acks set that no ack will remove."""


class WorkerRedisBroker(RedisBroker):
    """Dramatiq's `RedisBroker` with the patches above, for worker processes (its consumer:
    `consumer.SafeConsumer`; what cannot run: `poison.fault_of`)."""

    enqueue_retry_seconds = ENQUEUE_RETRY_SECONDS
    idle_sweep_seconds = IDLE_SWEEP_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._held: dict[str, HeldIds] = {}
        self._held_lock = threading.Lock()
        self.worker: JobWorker[Any] = JobWorker(None, context=None, backend="dramatiq")
        """Reports what cannot run (`register_actors` sets the one with the app's instrumentation)."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        return SafeConsumer(super().consume(queue_name, prefetch, timeout), self, queue_name)

    def held(self, queue_name: str) -> HeldIds:
        """What this worker process holds of `queue_name`: given out, not yet acked or nacked."""
        with self._held_lock:
            return self._held.setdefault(queue_name, HeldIds())

    def do_fetch(self, queue_name: str, count: int) -> list[bytes]:
        """Dramatiq's fetch, less the items that cannot run: those are sorted out at once."""
        batch: list[bytes | None] = self._dispatch("fetch")(queue_name, count)  # type: ignore[no-untyped-call]
        runnable = [data for data in batch if data and not fault_of(data, queue_name)[0]]
        if len(runnable) < len(batch):
            self.sort_out(queue_name, requeue=False)
        return runnable

    def sort_out(self, queue_name: str, *, requeue: bool) -> None:
        """Settle the ids in this worker's acks set of `queue_name` that it does not hold. One
        that cannot run is nacked (dead-lettered; an id without a body just leaves the set) and
        reported; one that can is put back on the queue if `requeue` (a broken consumer left
        it), else left alone (it belongs to the batch being fetched)."""
        acks: Any = self.client.smembers(f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}")
        ids = sorted({i.decode() for i in acks} - self.held(queue_name).snapshot())
        bodies: Any = self.client.hmget(f"{self.namespace}:{queue_name}.msgs", ids) if ids else []
        runnable = []
        for redis_id, data in zip(ids, bodies):
            fault, job_name = fault_of(data, queue_name, redis_id)
            if not fault:
                runnable.append(redis_id)
                continue
            self.do_nack(queue_name, redis_id)
            where = (
                f"the dead-letter queue {self.namespace}:{q_name(queue_name)}.XQ"
                if data is not None
                else f"no place: its id was dropped from this worker's acks set of {queue_name!r}"
            )
            size = len(data or b"")
            self.worker.report_malformed(
                message_id=redis_id, job_name=job_name, size=size, where=where, error=fault
            )
        if requeue and runnable:
            self.do_requeue(queue_name, *runnable)
            logger.warning(
                "put %d message(s) back on %r: fetched by this worker while its connection to "
                "the broker broke, and not held by it",
                len(runnable),
                queue_name,
            )

    def do_enqueue(self, queue_name: str, redis_id: str, data: bytes) -> None:
        """Dramatiq's enqueue script, tried again under the same id while the broker cannot be
        reached. An attempt that Redis ran but whose reply was lost (Redis shutting down) is not
        run again, unless a worker already took it: the job is then enqueued twice and runs at
        least once, as after any broker failure."""
        deadline = time.monotonic() + self.enqueue_retry_seconds
        pause, tried = 0.1, False
        while True:
            try:
                if tried and self.client.hexists(f"{self.namespace}:{queue_name}.msgs", redis_id):
                    return
                self._dispatch("enqueue")(queue_name, redis_id, data)  # type: ignore[no-untyped-call]
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + pause > deadline:
                    raise
                logger.warning(
                    "could not enqueue message %s on %r: %s; trying again in %.1fs",
                    redis_id,
                    queue_name,
                    exc,
                    pause,
                )
                time.sleep(pause)
                pause, tried = min(pause * 2, 2.0), True
