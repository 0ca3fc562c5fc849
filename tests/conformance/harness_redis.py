"""What the Celery and Dramatiq harnesses share: a backend on the session's private Redis.

A subclass names its backend, Redis database, session class (a worker for the test's
registry) and dispatcher class; the rest (settings, environment, the unreachable broker
for C7) is the same for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol

from jobs_core import JobDispatcherPort, JobRegistry, JobsSettings
from jobs_core.instrumentation import Instrumentation
from tests.support.hanging_server import HangingServer
from tests.support.redis_server import free_port


class Session(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


def forget_queue(client: Any, pattern: str) -> None:
    """Delete a finished session's keys (those matching `pattern`) and close `client`."""
    try:
        keys = list(client.scan_iter(match=pattern, count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class RedisBrokerHarness:
    name: str
    redis_db: int
    durable = True
    has_worker_queue = True
    reports_unknown_jobs = True

    def __init__(self, resources: Any) -> None:
        self.resources = resources

    @property
    def url(self) -> str:
        url: str = self.resources.redis_url(self.redis_db)
        return url

    session_type: Callable[[str, JobRegistry[Any], Any, Instrumentation], Session]
    """Makes a session (a worker for the test's registry) on the broker at a URL."""
    dispatcher_type: Callable[..., JobDispatcherPort]
    """The backend's dispatcher, made as `dispatcher_type(url, queue, timeout=...)`."""

    def make_session(
        self, registry: JobRegistry[Any], context: Any, instrumentation: Instrumentation
    ) -> Session:
        return self.session_type(self.url, registry, context, instrumentation)

    def make_dispatcher(self, url: str, queue: str, timeout: float) -> JobDispatcherPort:
        return self.dispatcher_type(url, queue, timeout=timeout)

    @contextmanager
    def session(
        self, registry: JobRegistry[Any], *, context: Any, instrumentation: Instrumentation
    ) -> Iterator[Any]:
        session = self.make_session(registry, context, instrumentation)
        try:
            session.start()
            yield session
        finally:
            session.close()

    def settings(self) -> JobsSettings:
        return JobsSettings(backend=self.name, broker_url=self.url, queue="conformance")

    def environment(self) -> dict[str, str]:
        return {"JOBS_BROKER_URL": self.url, "JOBS_QUEUE": "conformance"}

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
