"""End to end against the real Inngest Dev Server, where its binary is on PATH (the whole
contract suite runs against it too: the `inngest-devserver` harness in tests/conformance).

The Dev Server cannot be installed on the project's machines (its npm package downloads a
binary at install time), so this test skips there and says why; everything else about Inngest
is tested through the stand-in in tests/inngest_harness/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import inngest
import pytest

from jobs_core import JobRegistry
from jobs_core.backends.inngest import InngestDispatcher, create_inngest_app
from tests.inngest.app import Greeting
from tests.inngest_harness import run_asgi_app
from tests.support.inngest_dev_server import NO_BINARY, DevServer, find_dev_server_binary

pytestmark = pytest.mark.timeout(120)

WAIT = 60.0


@pytest.fixture
def dev_server() -> Iterator[DevServer]:
    binary = find_dev_server_binary()
    if binary is None:
        pytest.skip(NO_BINARY)
    with DevServer(binary) as server:
        yield server


def test_dispatch_runs_the_job_on_the_real_dev_server(dev_server: DevServer) -> None:
    registry: JobRegistry[Any] = JobRegistry()
    done: list[str] = []

    @registry.job("devserver.greet")
    def greet(payload: Greeting, ctx: Any) -> None:
        done.append(payload.name)

    client = inngest.Inngest(
        app_id="jobs-core-devserver",
        is_production=False,
        api_base_url=dev_server.url,
        event_api_base_url=dev_server.url,
    )
    app = create_inngest_app(registry, context=None, client=client)
    with run_asgi_app(app) as base_url:
        sync = httpx.put(f"{base_url}/api/inngest", timeout=WAIT)
        assert sync.status_code == 200, sync.text
        dispatcher = InngestDispatcher(client)
        deadline = time.monotonic() + WAIT
        try:
            # The first sync can lag a few seconds: an event sent before it starts no run, so
            # the dispatch is repeated, keyed: Inngest runs the function once for that id.
            while not done and time.monotonic() < deadline:
                receipt = dispatcher.dispatch_sync(
                    greet, {"name": "real server"}, idempotency_key="once"
                )
                for _ in range(20):
                    if done:
                        break
                    time.sleep(0.1)
        finally:
            dispatcher.close()
    assert done == ["real server"], dev_server.log()
    assert receipt.dispatch_id == "devserver.greet:once"
