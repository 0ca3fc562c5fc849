"""The Inngest backend's harness: the loopback stand-in for Inngest plus the real served app.

Each session starts its own `InngestHarness` (Event API + executor, dev mode) and serves the
test's registry with `jobs_core.backends.inngest.create_inngest_app` under uvicorn on a free port, then
syncs the app with the harness. Jobs go dispatch → Event API → executor → HTTP call of the
served function → `run_job` → handler, as on Inngest. Everything stops on exit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import inngest

from jobs_core import JobRegistry, JobsSettings
from jobs_core.backends.inngest import InngestDispatcher, create_inngest_app
from jobs_core.instrumentation import Instrumentation
from tests.inngest_harness import InngestHarness, run_asgi_app
from tests.inngest_harness.protocol import event_name_matches
from tests.support.hanging_server import HangingServer
from tests.support.redis_server import free_port

from .harness import DRAIN_TIMEOUT

RETRY_DELAY = 0.01
"""Seconds the stand-in waits before retrying an error that carries no `retry-after`. Every
retry of ours carries one (the core's backoff), so this only bounds the SDK's own errors."""


class InngestSession:
    def __init__(self, harness: InngestHarness, app_id: str, dispatcher: InngestDispatcher) -> None:
        self.harness = harness
        self.app_id = app_id
        self.dispatcher = dispatcher
        self.client = dispatcher.client

    def send_raw(self, job_name: str, data: Any) -> None:
        self.client.send_sync(inngest.Event(name=job_name, data=data))

    def dead_letters(self) -> list[str]:
        """Failed runs (by job name), and events that no function took: Inngest keeps both
        where an operator sees them (the run list, the event log)."""
        prefix = f"{self.app_id}-"
        failed = [
            run.function_id.removeprefix(prefix)
            for run in self.harness.runs()
            if run.status == "failed"
        ]
        triggers = [
            t["event"]
            for fn in self.harness.functions.values()
            for t in fn.triggers
            if "event" in t
        ]
        untaken = [
            e.name
            for e in self.harness.events
            if not e.internal and not any(event_name_matches(t, e.name) for t in triggers)
        ]
        return failed + untaken

    def enqueued_count(self) -> int:
        return sum(1 for e in self.harness.events if not e.internal)

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """The stand-in's own drain, `wait_until_idle`: every run of every event finished (one
        waiting for a retry or for its `ts` counts as running). The server starts an event's
        runs when it accepts the event, so a dispatch that returned is never missed."""
        try:
            self.harness.wait_until_idle(timeout)
        except TimeoutError as exc:
            raise AssertionError(str(exc)) from None


class InngestBackendHarness:
    name = "inngest"
    durable = True
    has_worker_queue = True
    reports_unknown_jobs = False
    """An event no function takes never reaches the app, so the worker cannot log it: Inngest
    keeps it in its event log with no run (C17, README)."""

    @contextmanager
    def session(
        self, registry: JobRegistry[Any], *, context: Any, instrumentation: Instrumentation
    ) -> Iterator[InngestSession]:
        """A stand-in of the session's own, the test's registry served as an app (a new app id)
        and synced with it, and a dispatcher; how the stand-in reaches the app is `serving`'s."""
        app_id = f"conf-{uuid.uuid4().hex[:8]}"
        with self.serving() as (stand_in, reach):
            client = inngest.Inngest(app_id=app_id, **stand_in.client_kwargs())
            app = create_inngest_app(
                registry, context=context, client=client, instrumentation=instrumentation
            )
            stand_in.register_app(reach(app) + "/api/inngest")
            dispatcher = InngestDispatcher(client, instrumentation=instrumentation)
            try:
                yield InngestSession(stand_in, app_id, dispatcher)
            finally:
                dispatcher.close()

    @contextmanager
    def serving(self) -> Iterator[tuple[InngestHarness, Callable[[Any], str]]]:
        """Start a stand-in, and yield it with `reach(app)`, which makes the ASGI `app` callable
        by it and returns the app's base URL: here the app is served under uvicorn on a free
        port. The app (if any) stops first on exit, then the stand-in."""
        with InngestHarness(retry_delay=RETRY_DELAY) as stand_in, ExitStack() as served:
            yield stand_in, lambda app: served.enter_context(run_asgi_app(app))

    def settings(self) -> JobsSettings:
        return JobsSettings(backend="inngest", inngest_app_name="conformance")

    def environment(self) -> dict[str, str]:
        # Dev mode against a port nobody listens on: enough to build a dispatcher.
        return {
            "INNGEST_DEV": "1",
            "INNGEST_EVENT_API_BASE_URL": f"http://127.0.0.1:{free_port()}",
        }

    @contextmanager
    def unreachable_dispatcher(
        self, registry: JobRegistry[Any], *, timeout: float, hanging: bool
    ) -> Iterator[InngestDispatcher]:
        def make(port: int) -> InngestDispatcher:
            client = inngest.Inngest(
                app_id="unreachable",
                is_production=False,
                event_api_base_url=f"http://127.0.0.1:{port}",
            )
            return InngestDispatcher(client, timeout=timeout)

        if hanging:
            with HangingServer() as server:
                dispatcher = make(server.port)
                try:
                    yield dispatcher
                finally:
                    dispatcher.close()
        else:
            dispatcher = make(free_port())
            try:
                yield dispatcher
            finally:
                dispatcher.close()


def make_harness(resources: Any) -> InngestBackendHarness:
    return InngestBackendHarness()
