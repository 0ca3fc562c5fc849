"""The Celery backend's harness: a real Redis broker and a real in-process Celery worker.

Each session gets its own Celery app and a unique queue (isolation: no test's messages reach
another's worker), built by `jobs_core.backends.celery.create_celery_app` exactly as a production worker
is, and an embedded worker (`celery.contrib.testing.worker.start_worker`, threads pool). Only
how long the worker's idle waits last differs (`PromptRedisTransport`, `EMBEDDED_WORKER`), so
that it stops in tens of milliseconds, not a second. On exit the worker stops (bounded), the
app and the dispatcher close, and the session's keys are deleted.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

from celery import signals
from celery.contrib.testing.worker import start_worker
from celery.utils import timer2

from jobs_core import JobRegistry
from jobs_core.backends.celery import CeleryDispatcher, dead_letter_queue
from jobs_core.backends.celery.fixes import RedisTransport
from jobs_core.instrumentation import Instrumentation
from tests.celery.embedded import embedded_worker_app

from .harness import DRAIN_TIMEOUT, wait_quiet
from .harness_redis import RedisBrokerHarness, RedisSession, forget_queue

REDIS_DB = 3
WORKER_CONCURRENCY = 2
SHUTDOWN_TIMEOUT = 10.0
TIMER_PRECISION = 0.05
"""`worker_timer_precision`: the longest nap of the worker's ETA timer between looks at its
schedule (Celery's 1 s held a stopping worker up to a second after a retry)."""


class PromptTimer(timer2.Timer):  # type: ignore[misc]
    """Celery's ETA timer (`worker_timer`), whose `stop` wakes its thread: an idle one waits up
    to 1 s for work, and Celery's own `stop` waits for that wait to end."""

    def stop(self) -> None:
        self._Timer__is_shutdown.set()
        with self.not_empty:
            self.not_empty.notify_all()
        super().stop()


class PromptRedisTransport(RedisTransport):  # type: ignore[misc]
    """The adapter's Redis transport (`jobs_core.backends.celery.fixes.RedisTransport`, the
    one a worker on Redis gets), its idle BRPOP blocking 0.1 s at a time instead of kombu's
    1 s: a stopping worker waits for the BRPOP in flight."""

    brpop_timeout = 0.1


EMBEDDED_WORKER = {
    "worker_timer": f"{__name__}:PromptTimer",
    "worker_timer_precision": TIMER_PRECISION,
}
"""Celery settings of the harnesses' embedded workers: stopped within a few tens of ms."""


class EmbeddedWorkerSession:
    """What the Celery harnesses' sessions share: the embedded worker for `app` (threads pool,
    `WORKER_CONCURRENCY`), started by `start`; `close` stops it (bounded by
    `SHUTDOWN_TIMEOUT`), then closes the app and the dispatcher and forgets the session's queues
    on the broker, whatever happened. A subclass makes `app`, `queue` and `dispatcher`, and
    says how its broker forgets a queue (`forget`)."""

    app: Any
    queue: str
    dispatcher: CeleryDispatcher
    worker: Any = None
    """The started worker (`celery.contrib.testing.worker.TestWorkController`)."""

    def start(self) -> None:
        self._stack = ExitStack()
        self.worker = self._stack.enter_context(
            start_worker(
                self.app,
                pool="threads",
                concurrency=WORKER_CONCURRENCY,
                perform_ping_check=False,
                loglevel="WARNING",
                shutdown_timeout=SHUTDOWN_TIMEOUT,
            )
        )

    def close(self) -> None:
        try:
            self._stack.close()  # stops the worker, bounded by SHUTDOWN_TIMEOUT
        finally:
            signals.task_unknown.disconnect(self.app.jobs_core_unknown_receiver)
            self.app.close()
            self.dispatcher.close()
            self.forget()

    def forget(self) -> None:
        """Delete the session's queues (and its dead letters) on the broker."""
        raise NotImplementedError

    def send_raw(self, job_name: str, data: Any) -> None:
        self.dispatcher.app.send_task(job_name, args=(data,), queue=self.queue)


class CelerySession(EmbeddedWorkerSession, RedisSession):
    dispatcher_type = CeleryDispatcher
    enqueue_command = "lpush"  # kombu's Redis transport sends one LPUSH per message

    def serve(
        self, registry: JobRegistry[Any], context: Any, instrumentation: Instrumentation
    ) -> None:
        self.app = embedded_worker_app(
            registry,
            self.url,
            self.queue,
            instrumentation,
            context=context,
            broker_transport=f"{__name__}:PromptRedisTransport",
            **EMBEDDED_WORKER,
        )

    def forget(self) -> None:
        forget_queue(self.client, f"*{self.queue}*")

    # -- BackendSession -------------------------------------------------------------------

    def dead_letters(self) -> list[str]:
        raw: list[bytes] = self.client.lrange(dead_letter_queue(self.queue), 0, -1)  # type: ignore[assignment]
        return [str(json.loads(item)["headers"]["task"]) for item in raw]

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Until the session's queue is empty in Redis and no message of it is delivered and
        unacked (kombu's `unacked` hash): with late acks a running job's message, a retry's
        (published before the message it replaces is acked) and one waiting for its ETA all
        stay there until settled. Seen quiet three times in a row, 10 ms apart: kombu moves a
        message from the list to the hash in two steps."""

        def busy() -> int:
            queued = int(self.client.llen(self.queue))  # type: ignore[arg-type]
            routes = (json.loads(v)[2] for v in self.client.hvals("unacked"))  # type: ignore[union-attr]
            return queued + sum(1 for route in routes if route == self.queue)

        wait_quiet(busy, timeout, f"celery queue {self.queue!r}")


class CeleryHarness(RedisBrokerHarness):
    name = "celery"
    redis_db = REDIS_DB
    session_type = CelerySession
    dispatcher_type = CeleryDispatcher


def make_harness(resources: Any) -> CeleryHarness:
    return CeleryHarness(resources)
