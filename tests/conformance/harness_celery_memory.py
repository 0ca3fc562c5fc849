"""The Celery backend on kombu's own fake broker, `memory://`, with a real Celery worker.

The worker is the production one (`jobs_core.backends.celery.create_celery_app`, embedded with
`celery.contrib.testing.worker.start_worker`, threads pool) and so is the producer
(`CeleryDispatcher("memory://", queue)`); the messages go through kombu's in-memory transport,
which both share within the test's process. Retries, ETAs and late acknowledgements are
Celery's and kombu's own, as on a broker; `drain` waits until the session's queue is empty and
the worker's channel holds no unacknowledged message.

The broker's own part (Redis transactions, what a Redis or RabbitMQ broker keeps, a broker
that is down) is the `celery` harness's, on a real redis-server.
"""

from __future__ import annotations

from typing import Any

from celery import signals
from kombu.transport import memory

from jobs_core import JobRegistry
from jobs_core.backends.celery import CeleryDispatcher, dead_letter_queue
from jobs_core.instrumentation import Instrumentation
from tests.celery.embedded import embedded_worker_app
from tests.support.names import new_queue_name

from .harness import DRAIN_TIMEOUT, FakeBrokerHarness, wait_quiet
from .harness_celery import EMBEDDED_WORKER, EmbeddedWorkerSession

URL = "memory://"
POLLING_INTERVAL = 0.005
"""Seconds the worker's idle in-memory channel waits before it looks again (kombu's virtual
transports poll; its default, 1 s, would hold every message up to a second)."""
IDLE_WAIT = 0.05
"""Seconds one idle wait of the worker's event loop lasts at most (Celery asks for 2 s, and
stopping a worker waits for the current one to end)."""


class MemoryTransport(memory.Transport):  # type: ignore[misc]
    """kombu's in-memory transport (the same process-wide state), whose idle waits end within
    `IDLE_WAIT`: Celery's loop for transports without async I/O then sees a stop at once."""

    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:
        wait = IDLE_WAIT if timeout is None else min(timeout, IDLE_WAIT)
        return super().drain_events(connection, timeout=wait)


class CeleryMemorySession(EmbeddedWorkerSession):
    def __init__(self, registry: JobRegistry[Any], context: Any, inst: Instrumentation) -> None:
        self.queue = new_queue_name("mem")
        self.app = embedded_worker_app(
            registry,
            URL,
            self.queue,
            inst,
            context=context,
            broker_transport=f"{__name__}:MemoryTransport",
            broker_transport_options={"polling_interval": POLLING_INTERVAL},
            **EMBEDDED_WORKER,
        )
        self.dispatcher = CeleryDispatcher(URL, self.queue, instrumentation=inst)
        self._enqueued = 0
        signals.before_task_publish.connect(self._count, weak=False)

    def _count(self, sender: Any = None, routing_key: str = "", **_: Any) -> None:
        if routing_key == self.queue:
            self._enqueued += 1

    def forget(self) -> None:
        signals.before_task_publish.disconnect(self._count)
        for name in (self.queue, dead_letter_queue(self.queue)):
            memory.Channel.queues.pop(name, None)

    # -- BackendSession -------------------------------------------------------------------

    def dead_letters(self) -> list[str]:
        kept = memory.Channel.queues.get(dead_letter_queue(self.queue))
        items = list(kept.queue) if kept is not None else []
        return [str(item["headers"]["task"]) for item in items]

    def enqueued_count(self) -> int:
        """Task messages published for the session's queue (Celery's `before_task_publish`),
        by the producer and by the worker's retries."""
        return self._enqueued

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Until the session's in-memory queue is empty and the worker's channel holds no
        message it has not acknowledged: with late acks a running job's message, a retry's
        (published before the one it replaces is acked) and one waiting for its ETA all stay
        unacknowledged until settled. Seen quiet three times in a row, 10 ms apart."""
        channel = self.worker.consumer.task_consumer.channel

        def busy() -> int:
            qos = channel.qos
            unacked = len(set(qos._delivered) - set(qos._dirty))
            return int(channel._size(self.queue)) + unacked

        wait_quiet(busy, timeout, f"celery memory queue {self.queue!r}")


class CeleryMemoryHarness(FakeBrokerHarness):
    name = "celery"
    session_type = CeleryMemorySession

    @property
    def url(self) -> str:
        return URL


def make_harness(resources: Any) -> CeleryMemoryHarness:
    return CeleryMemoryHarness(resources)
