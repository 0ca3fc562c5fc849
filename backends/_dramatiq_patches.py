"""Patches that keep Dramatiq's promises where Dramatiq 2.2's Redis broker alone would not.

`WorkerRedisBroker` is Dramatiq's `RedisBroker` for workers, with:

- a consumer that survives a message it cannot decode. Upstream, `DecodeError` escapes the
  consumer's `__next__`: the consumer thread logs it, drops the consumer with the rest of its
  prefetched batch, and starts a new one, so the undecodable message and that batch stay
  fetched-but-unacked for as long as the worker process lives. Here the message is moved to
  the dead-letter queue (`<queue>.XQ`) and the batch goes on.
- a consumer that puts back what its predecessor stranded. Redis runs the fetch script (which
  marks messages as this worker's) even when its reply is lost, as when the broker restarts,
  and a consumer thread that restarts after a connection error drops its delayed messages from
  memory: both stay in this worker's acks set until the process dies. Each new consumer, before
  its first fetch, requeues the ids of that set that the worker does not hold.
- an `enqueue` that waits for the broker to come back. A retry is a message enqueued by the
  `Retries` middleware before the old one is acked; when that enqueue failed (the broker
  restarting), the old message was acked anyway and the job was lost.

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

from jobs_core.payload import PAYLOAD_MASK

ConnectionClosed: Any = _ConnectionClosed  # untyped constructor

logger = logging.getLogger("jobs_core.backends.dramatiq")

ENQUEUE_RETRY_SECONDS = 300.0
"""How long a worker keeps trying to enqueue (a retry, a delayed job that is due) while the
broker cannot be reached, before it gives up on that enqueue."""


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
    """Wraps a Redis consumer: dead-letters undecodable messages, requeues stranded ones."""

    def __init__(self, inner: Any, broker: WorkerRedisBroker, queue_name: str) -> None:
        self.inner = inner
        self.broker = broker
        self.queue_name = queue_name
        self.held = broker.held(queue_name)
        self._acks = f"{broker.namespace}:__acks__.{broker.broker_id}.{queue_name}"
        self._started = False

    def __next__(self) -> Any:
        if not self._started:
            self._requeue_stranded()
            self._started = True
        while True:
            try:
                message = next(self.inner)
            except DecodeError as exc:
                self._dead_letter(exc)
                continue
            if message is not None:
                self.held.add(message.options.get("redis_message_id"))
            return message

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

    def _requeue_stranded(self) -> None:
        try:
            members: Any = self.broker.client.smembers(self._acks)
            fetched = {i.decode() for i in members}
            if q_name(self.queue_name) != self.queue_name:  # a delay queue: nothing kept
                self.held.clear()
            stranded = sorted(fetched - self.held.snapshot())
            if stranded:
                self.broker.do_requeue(self.queue_name, *stranded)
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None
        if stranded:
            logger.warning(
                "put %d message(s) back on %r: fetched by this worker while its connection to "
                "the broker broke, and not held by it",
                len(stranded),
                self.queue_name,
            )

    def _dead_letter(self, exc: DecodeError) -> None:
        """Find the undecodable message among this worker's fetched ids and nack it (XQ)."""
        client, message_id = self.broker.client, None
        try:
            ids = sorted(client.smembers(self._acks))
            stored = client.hmget(f"{self.broker.namespace}:{self.queue_name}.msgs", ids)
            message_id = next(
                (i.decode() for i, data in zip(ids, stored) if data == exc.data), None
            )
            if message_id is not None:
                self.broker.do_nack(self.queue_name, message_id)
        except redis.RedisError:
            logger.exception("could not dead-letter an undecodable message on %r", self.queue_name)
        where = (
            f"the dead-letter queue {self.broker.namespace}:{self.queue_name}.XQ"
            if message_id is not None
            else "this worker's unacked set (not found to move)"
        )
        self.broker.report_malformed(message_id, exc, where)


class WorkerRedisBroker(RedisBroker):
    """Dramatiq's `RedisBroker` with the patches above, for worker processes."""

    enqueue_retry_seconds = ENQUEUE_RETRY_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._held: dict[str, HeldIds] = {}
        self._held_lock = threading.Lock()
        self.worker: Any = None
        """The `JobWorker` that reports undecodable messages (set by `register_actors`)."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        return SafeConsumer(super().consume(queue_name, prefetch, timeout), self, queue_name)

    def held(self, queue_name: str) -> HeldIds:
        """What this worker process holds of `queue_name`: given out, not yet acked or nacked."""
        with self._held_lock:
            return self._held.setdefault(queue_name, HeldIds())

    def report_malformed(self, message_id: str | None, exc: DecodeError, where: str) -> None:
        if self.worker is not None:
            size = len(exc.data) if isinstance(exc.data, (bytes, str)) else 0
            error = exc.error if exc.error is not None else exc
            self.worker.report_malformed(
                message_id=message_id, job_name=None, size=size, where=where, error=error
            )

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        """`RedisBroker.enqueue`, tried again while the broker is unreachable. If Redis ran an
        attempt whose reply was lost, the message is enqueued twice: the job runs at least
        once, as after any broker failure."""
        deadline = time.monotonic() + self.enqueue_retry_seconds
        pause = 0.1
        while True:
            try:
                return super().enqueue(message, delay=delay)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + pause > deadline:
                    raise
                logger.warning(
                    "could not enqueue message %s on %r: %s; trying again in %.1fs",
                    message.message_id,
                    message.queue_name,
                    exc,
                    pause,
                )
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
