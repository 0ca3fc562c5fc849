"""The Celery backend's harness: a real Redis broker and a real in-process Celery worker.

Each session gets its own Celery app and a unique queue (isolation: no test's messages reach
another's worker), built by `jobs_core.backends.celery.create_celery_app` exactly as a production worker
is, and an embedded worker (`celery.contrib.testing.worker.start_worker`, threads pool). On exit
the worker stops (bounded), the app and the dispatcher close, and the session's keys are deleted.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import redis
from celery import signals
from celery.contrib.testing.worker import start_worker

from jobs_core import JobRegistry, JobsSettings
from jobs_core.backends.celery import CeleryDispatcher, create_celery_app, dead_letter_queue
from jobs_core.instrumentation import Instrumentation

REDIS_DB = 3
WORKER_CONCURRENCY = 2
SHUTDOWN_TIMEOUT = 10.0


def _lpush_calls(client: redis.Redis) -> int:
    """Server-wide count of LPUSH commands (kombu's Redis transport sends one per message)."""
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_lpush", {}).get("calls", 0))


class CelerySession:
    def __init__(
        self,
        url: str,
        registry: JobRegistry[Any],
        context: Any,
        instrumentation: Instrumentation,
    ) -> None:
        self.url = url
        self.queue = f"conf-{uuid.uuid4().hex[:10]}"
        self.client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        self.app = create_celery_app(
            registry,
            context=context,
            broker_url=url,
            queue=self.queue,
            instrumentation=instrumentation,
            worker_hijack_root_logger=False,
            worker_enable_remote_control=False,
            worker_send_task_events=False,
        )
        self.dispatcher = CeleryDispatcher(url, self.queue, instrumentation=instrumentation)
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
            try:
                keys = list(self.client.scan_iter(match=f"*{self.queue}*", count=500))
                if keys:
                    self.client.delete(*keys)
            finally:
                self.client.close()

    # -- BackendSession -------------------------------------------------------------------

    def send_raw(self, job_name: str, data: Any) -> None:
        self.dispatcher.app.send_task(job_name, args=(data,), queue=self.queue)

    def dead_letters(self) -> list[str]:
        raw: list[bytes] = self.client.lrange(dead_letter_queue(self.queue), 0, -1)  # type: ignore[assignment]
        return [str(json.loads(item)["headers"]["task"]) for item in raw]

    def enqueued_count(self) -> int:
        return _lpush_calls(self.client)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _hanging_port() -> Iterator[int]:
    """A port that accepts connections (from the listen backlog) and never answers."""
    try:
        from tests.support.hanging_server import HangingServer  # type: ignore[import-untyped]
    except ImportError:
        HangingServer = None
    if HangingServer is not None:
        with HangingServer() as server:
            yield int(server.port)
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


class CeleryHarness:
    name = "celery"
    durable = True
    has_worker_queue = True
    reports_unknown_jobs = True

    def __init__(self, resources: Any) -> None:
        self.resources = resources

    @property
    def url(self) -> str:
        url: str = self.resources.redis_url(REDIS_DB)
        return url

    @contextmanager
    def session(
        self, registry: JobRegistry[Any], *, context: Any, instrumentation: Instrumentation
    ) -> Iterator[CelerySession]:
        session = CelerySession(self.url, registry, context, instrumentation)
        try:
            session.start()
            yield session
        finally:
            session.close()

    def settings(self) -> JobsSettings:
        return JobsSettings(backend="celery", broker_url=self.url, queue="conformance")

    def environment(self) -> dict[str, str]:
        return {"JOBS_BROKER_URL": self.url, "JOBS_QUEUE": "conformance"}

    @contextmanager
    def unreachable_dispatcher(
        self, registry: JobRegistry[Any], *, timeout: float, hanging: bool
    ) -> Iterator[CeleryDispatcher]:
        def make(port: int) -> CeleryDispatcher:
            return CeleryDispatcher(f"redis://127.0.0.1:{port}/0", "unreachable", timeout=timeout)

        with ExitStack() as stack:
            port = stack.enter_context(_hanging_port()) if hanging else _free_port()
            dispatcher = make(port)
            stack.callback(dispatcher.close)
            yield dispatcher


def make_harness(resources: Any) -> CeleryHarness:
    return CeleryHarness(resources)
