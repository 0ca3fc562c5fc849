"""The Inngest backend against the real Inngest Dev Server, where its binary is on PATH.

One Dev Server per test session (tests/support/inngest_dev_server.py: loopback only, free
ports). Each test serves its registry from a FastAPI app of its own (a new app id) under
uvicorn, syncs it with a PUT as the Dev Server's UI does, and waits out the first sync's lag
with a probe function. What the stand-in reads from its records is read here from the Dev
Server's REST API (`GET /v1/events`). Without the binary every test of this harness skips,
saying why in the test summary.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fastapi
import httpx
import inngest
import pytest

from jobs_core import JobRegistry
from jobs_core.backends.inngest import InngestDispatcher, create_inngest_functions, serve
from jobs_core.instrumentation import Instrumentation
from tests.inngest_harness import run_asgi_app
from tests.support.inngest_dev_server import NO_BINARY, DevServer, find_dev_server_binary

from .harness import DRAIN_TIMEOUT
from .harness_inngest import InngestBackendHarness

QUIET = 3.0
"""Seconds `drain` waits on the Dev Server: longer than its executor takes to start a run of
an event it accepted, or a retry whose wait (under 1 s in these tests) it rounds up to the
next whole second."""

SYNC_WAIT = 30.0
"""The Dev Server's first sync can lag about 5 s before events start runs."""


class DevServerSession:
    def __init__(self, server: DevServer, client: inngest.Inngest, dispatcher: Any) -> None:
        self.server = server
        self.client = client
        self.dispatcher = dispatcher
        self.names: set[str] = set()
        self.jobs: set[str] = set()

    def send_raw(self, job_name: str, data: Any) -> None:
        self.names.add(job_name)
        self.client.send_sync(inngest.Event(name=job_name, data=data))

    def _events(self, name: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.server.url}/v1/events", params={"name": name, "limit": 50})
        answer.raise_for_status()
        body = answer.json()
        items = body.get("data", []) if isinstance(body, dict) else body
        return [e for e in items or [] if e.get("name") == name]

    def dead_letters(self) -> list[str]:
        """Events no function of the app takes: Inngest keeps them in its event log."""
        return [name for name in self.names - self.jobs if self._events(name)]

    def enqueued_count(self) -> int:
        return sum(len(self._events(name)) for name in self.jobs | self.names)

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """The Dev Server shows no queue to wait on (its REST API lists events, not what its
        executor still holds), so this is the one drain that is a window: `QUIET` seconds.
        Only here, where the real server is installed; the stand-in's drain is exact."""
        time.sleep(QUIET)


class DevServerHarness(InngestBackendHarness):
    """The same contract, run against the real server (the harness name stays `inngest`: it is
    the same backend)."""

    drains_exactly = False
    """`drain` is a quiet window here (the server shows no queue), not a proof."""
    keeps_first_of_a_key = False
    """Two events with one id, sent one after the other: the real server runs one of them,
    not always the first (it handles events concurrently); the stand-in runs the first."""

    def __init__(self, server: DevServer) -> None:
        self.server = server

    @contextmanager
    def session(
        self, registry: JobRegistry[Any], *, context: Any, instrumentation: Instrumentation
    ) -> Iterator[DevServerSession]:
        app_id = f"conf-{uuid.uuid4().hex[:8]}"
        url = self.server.url
        client = inngest.Inngest(
            app_id=app_id, is_production=False, api_base_url=url, event_api_base_url=url
        )
        probed = threading.Event()

        @client.create_function(
            fn_id="probe", trigger=inngest.TriggerEvent(event=f"probe/{app_id}"), retries=0
        )
        def probe(ctx: inngest.ContextSync) -> None:
            probed.set()

        app = fastapi.FastAPI()
        functions = create_inngest_functions(
            registry, context=context, instrumentation=instrumentation, client=client
        )
        serve(app, client, [*functions, probe])
        with run_asgi_app(app) as base_url:
            sync = httpx.put(f"{base_url}/api/inngest", timeout=SYNC_WAIT)
            assert sync.status_code == 200, sync.text
            deadline = time.monotonic() + SYNC_WAIT
            while True:
                client.send_sync(inngest.Event(name=f"probe/{app_id}"))
                if probed.wait(2.0):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the Dev Server never ran the probe:\n{self.server.log()}"
                    )
            dispatcher = InngestDispatcher(client, instrumentation=instrumentation)
            session = DevServerSession(self.server, client, dispatcher)
            session.jobs = {job.name for job in registry}
            try:
                yield session
            finally:
                dispatcher.close()

    def close(self) -> None:
        self.server.stop()


def make_harness(resources: Any) -> DevServerHarness:
    binary = find_dev_server_binary()
    if binary is None:
        pytest.skip(NO_BINARY)
    return DevServerHarness(DevServer(binary).start())
