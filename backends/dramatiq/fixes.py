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

`HidePayloads` shows a message in Dramatiq's worker log lines as `actor(<payload>) [id]`:
upstream logs a message's arguments in full ("Failed to process message %s ..."), and payloads
may hold personal data or secrets (C23).

Each patch has a test that fails without it (tests/poison, tests/dramatiq/test_durability.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from dramatiq.errors import ConnectionClosed as _ConnectionClosed
from dramatiq.errors import DecodeError

from jobs_core.jobs.payload import PAYLOAD_MASK
from jobs_core.worker import BROKER_AWAY_SECONDS, JobWorker

ConnectionClosed: Any = _ConnectionClosed  # untyped constructor

logger = logging.getLogger("jobs_core.backends.dramatiq")

ENQUEUE_RETRY_SECONDS = BROKER_AWAY_SECONDS
"""How long a worker keeps trying to enqueue (a retry, a delayed job that is due) while the
broker cannot be reached, before it gives up on that enqueue (the core's setting)."""


IDLE_SWEEP_SECONDS = 30.0
"""How often an idle consumer looks for ids left in its acks set that no ack will remove."""


class HidePayloads(logging.Filter):
    """Shows a message in Dramatiq's log lines as `actor(<payload>) [message id]`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                f"{a.actor_name}({PAYLOAD_MASK}) [{a.message_id}]"
                if isinstance(a, (dramatiq.Message, dramatiq.broker.MessageProxy))
                else a
                for a in record.args
            )
        return True


_HIDE_PAYLOADS = HidePayloads()


def hide_payloads(log: logging.Logger) -> None:
    """Install `HidePayloads` on `log` (once)."""
    if _HIDE_PAYLOADS not in log.filters:
        log.addFilter(_HIDE_PAYLOADS)


class HeldIds:
    """The Redis message ids of one queue that this worker process holds (thread-safe)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, message_id: str | None) -> None:
        with self._lock:
            self._ids.add(message_id or "")

    def discard(self, message_id: str | None) -> None:
        with self._lock:
            self._ids.discard(message_id or "")

    def clear(self) -> None:
        with self._lock:
            self._ids.clear()

    def snapshot(self) -> set[str]:
        with self._lock:
            return set(self._ids)


class SafeConsumer(dramatiq.broker.Consumer):
    """Wraps a Redis consumer: tracks what this worker holds, and on start settles what a
    broken predecessor left in the acks set (`WorkerRedisBroker.sort_out`)."""

    def __init__(self, inner: Any, broker: WorkerRedisBroker, queue_name: str) -> None:
        self.inner = inner
        self.broker = broker
        self.queue_name = queue_name
        self.held = broker.held(queue_name)
        self._swept: float | None = None

    def __next__(self) -> Any:
        if self._swept is None:  # what a broken predecessor left
            if q_name(self.queue_name) != self.queue_name:  # a delay queue: nothing kept
                self.held.clear()
            self._sweep(requeue=True)
        message = next(self.inner)
        if message is not None:
            self.held.add(message.options["redis_message_id"])
        elif time.monotonic() - (self._swept or 0.0) > self.broker.idle_sweep_seconds:
            self._sweep(requeue=False)  # an item whose ack missed it (a copied body)
        return message

    def _sweep(self, *, requeue: bool) -> None:
        try:
            self.broker.sort_out(self.queue_name, requeue=requeue)
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None
        self._swept = time.monotonic()

    def ack(self, message: Any) -> None:
        self.inner.ack(message)  # on a connection error the worker tries again: still held
        self.held.discard(message.options.get("redis_message_id"))

    def nack(self, message: Any) -> None:
        self.inner.nack(message)
        self.held.discard(message.options.get("redis_message_id"))

    def requeue(self, messages: Any) -> None:
        self.inner.requeue(messages)

    def close(self) -> None:
        self.inner.close()


_TYPED_FIELDS = (("actor_name", str), ("message_id", str), ("kwargs", dict), ("options", dict))


def fault_of(data: bytes | None, queue_name: str, redis_id: str | None = None) -> tuple[str, Any]:
    """Why `data` cannot run as a message fetched from `queue_name` ("" when it can), and the
    job name it carries. Dramatiq decodes any JSON object with the right keys whatever their
    types; a wrong type or another queue's name then stops a consumer or worker thread, or
    leaves the id in the acks set for as long as the worker lives."""
    if data is None:
        return "no message body", None
    try:
        message = dramatiq.Message.decode(data)
    except DecodeError as exc:
        return f"not a Dramatiq message: {type(exc.error).__name__}: {exc.error}", None
    name = message.actor_name if isinstance(message.actor_name, str) else None
    for field, kind in _TYPED_FIELDS:
        if not isinstance(getattr(message, field), kind):
            return f"its {field} is not a {kind.__name__}", name
    options = message.options
    if not isinstance(options.get("redis_message_id"), str) or redis_id not in (
        None,
        options["redis_message_id"],
    ):
        return "its options.redis_message_id is not the id it was queued under", name
    if not isinstance(options.get("retries", 0), int):
        return "its options.retries is not an int", name
    if message.queue_name != queue_name:
        return f"its queue_name {message.queue_name!r} is not {queue_name!r}", name
    return "", name


class WorkerRedisBroker(RedisBroker):
    """Dramatiq's `RedisBroker` with the patches above, for worker processes."""

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
