"""What the Celery and Dramatiq harnesses share: a backend on the session's private Redis.

A subclass names its backend, Redis database, session class (a worker for the test's
registry) and dispatcher class; the rest (the unreachable broker for C7 here, starting and
closing sessions, settings and environment in `WorkerHarness`) is the same for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import redis

from jobs_core import JobDispatcherPort, JobRegistry
from jobs_core.instrumentation import Instrumentation
from tests.support.hanging_server import HangingServer
from tests.support.names import new_queue_name
from tests.support.redis_server import free_port

from .harness import StartedSession, WorkerHarness


def forget_queue(client: Any, pattern: str) -> None:
    """Delete a finished session's keys (those matching `pattern`) and close `client`."""
    try:
        keys = list(client.scan_iter(match=pattern, count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class RedisSession:
    """A session on the private Redis: a queue of its own, a client, the backend's dispatcher
    for that queue, and (`serve`, the subclass's) a worker for the test's registry."""

    dispatcher_type: Callable[..., Any]
    """The backend's dispatcher, made as `dispatcher_type(url, queue, instrumentation=...)`."""
    enqueue_command: str
    """The Redis command the backend's enqueue sends once per message (INFO commandstats)."""

    def __init__(
        self,
        url: str,
        registry: JobRegistry[Any],
        context: Any,
        instrumentation: Instrumentation,
    ) -> None:
        self.url = url
        self.queue = new_queue_name("conf")
        self.client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        self.serve(registry, context, instrumentation)
        self.dispatcher = self.dispatcher_type(url, self.queue, instrumentation=instrumentation)

    def serve(
        self, registry: JobRegistry[Any], context: Any, instrumentation: Instrumentation
    ) -> None:
        """Make (not start) the worker that runs `registry` from `self.queue`."""
        raise NotImplementedError

    def enqueued_count(self) -> int:
        """Server-wide count of `enqueue_command` calls: one per message the backend sent."""
        stats: dict[str, Any] = self.client.info("commandstats")
        return int(stats.get(f"cmdstat_{self.enqueue_command}", {}).get("calls", 0))


class RedisBrokerHarness(WorkerHarness):
    """A `WorkerHarness` on the private Redis, database `redis_db`."""

    redis_db: int

    @property
    def url(self) -> str:
        url: str = self.resources.redis_url(self.redis_db)
        return url

    session_type: Callable[[str, JobRegistry[Any], Any, Instrumentation], StartedSession]
    """Makes a session (a worker for the test's registry) on the broker at a URL."""
    dispatcher_type: Callable[..., JobDispatcherPort]
    """The backend's dispatcher, made as `dispatcher_type(url, queue, timeout=...)`."""

    def make_session(
        self, registry: JobRegistry[Any], context: Any, instrumentation: Instrumentation
    ) -> StartedSession:
        return self.session_type(self.url, registry, context, instrumentation)

    def make_dispatcher(self, url: str, queue: str, timeout: float) -> JobDispatcherPort:
        return self.dispatcher_type(url, queue, timeout=timeout)

    @contextmanager
    def unreachable_dispatcher(
        self, registry: JobRegistry[Any], *, timeout: float, hanging: bool
    ) -> Iterator[JobDispatcherPort]:
        """A dispatcher whose Redis refuses connections, or accepts them and never answers."""
        with ExitStack() as stack:
            port = stack.enter_context(HangingServer()).port if hanging else free_port()
            dispatcher = self.make_dispatcher(f"redis://127.0.0.1:{port}/0", "unreachable", timeout)
            stack.callback(dispatcher.close)  # type: ignore[attr-defined]
            yield dispatcher
