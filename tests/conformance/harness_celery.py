"""The Celery backend's harness: a real Redis broker and a real in-process Celery worker.

Each session gets its own Celery app and a unique queue (isolation: no test's messages reach
another's worker), built by `jobs_core.backends.celery.create_celery_app` exactly as a production worker
is, and an embedded worker (`celery.contrib.testing.worker.start_worker`, threads pool). On exit
the worker stops (bounded), the app and the dispatcher close, and the session's keys are deleted.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

from celery import signals
from celery.contrib.testing.worker import start_worker

from jobs_core import JobRegistry
from jobs_core.backends.celery import CeleryDispatcher, dead_letter_queue
from jobs_core.instrumentation import Instrumentation
from tests.celery.embedded import embedded_worker_app

from .harness_redis import RedisBrokerHarness, RedisSession, forget_queue

REDIS_DB = 3
WORKER_CONCURRENCY = 2
SHUTDOWN_TIMEOUT = 10.0


class CelerySession(RedisSession):
    dispatcher_type = CeleryDispatcher
    enqueue_command = "lpush"  # kombu's Redis transport sends one LPUSH per message

    def serve(
        self, registry: JobRegistry[Any], context: Any, instrumentation: Instrumentation
    ) -> None:
        self.app = embedded_worker_app(
            registry, self.url, self.queue, instrumentation, context=context
        )
        self._stack = ExitStack()

    def start(self) -> None:
        self._stack.enter_context(
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
            forget_queue(self.client, f"*{self.queue}*")

    # -- BackendSession -------------------------------------------------------------------

    def send_raw(self, job_name: str, data: Any) -> None:
        self.dispatcher.app.send_task(job_name, args=(data,), queue=self.queue)

    def dead_letters(self) -> list[str]:
        raw: list[bytes] = self.client.lrange(dead_letter_queue(self.queue), 0, -1)  # type: ignore[assignment]
        return [str(json.loads(item)["headers"]["task"]) for item in raw]


class CeleryHarness(RedisBrokerHarness):
    name = "celery"
    redis_db = REDIS_DB
    session_type = CelerySession
    dispatcher_type = CeleryDispatcher


def make_harness(resources: Any) -> CeleryHarness:
    return CeleryHarness(resources)
