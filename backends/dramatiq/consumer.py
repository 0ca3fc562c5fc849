"""The consumer of `WorkerRedisBroker` (fixes.py): it knows which messages this worker holds,
and before its first fetch it settles what a broken predecessor left in the acks set."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
from dramatiq.common import q_name
from dramatiq.errors import ConnectionClosed as _ConnectionClosed

if TYPE_CHECKING:
    from .fixes import WorkerRedisBroker

ConnectionClosed: Any = _ConnectionClosed  # untyped constructor


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
