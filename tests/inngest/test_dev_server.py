"""End to end against the real Inngest Dev Server, where its binary is on PATH.

The Dev Server cannot be installed on the project's machines (its npm package downloads a
binary at install time), so this test skips there and says why; everything else about Inngest
is tested through the stand-in in tests/inngest_harness/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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
from tests.support.redis_server import free_port

pytestmark = pytest.mark.timeout(120)

BINARY = shutil.which("inngest") or shutil.which("inngest-cli")
WAIT = 60.0


@pytest.fixture
def dev_server() -> Iterator[str]:
    if BINARY is None:
        pytest.skip(
            "no `inngest` or `inngest-cli` binary on PATH: the Inngest Dev Server cannot be "
            "installed here (its npm package downloads the binary at install time)"
        )
    port = free_port()
    process = subprocess.Popen(
        [BINARY, "dev", "--no-discovery", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "DO_NOT_TRACK": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                httpx.get(url, timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError("the Inngest Dev Server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_dispatch_runs_the_job_on_the_real_dev_server(dev_server: str) -> None:
    registry: JobRegistry[Any] = JobRegistry()
    done: list[str] = []

    @registry.job("devserver.greet")
    def greet(payload: Greeting, ctx: Any) -> None:
        done.append(payload.name)

    client = inngest.Inngest(
        app_id="jobs-core-devserver",
        is_production=False,
        api_base_url=dev_server,
        event_api_base_url=dev_server,
    )
    app = create_inngest_app(registry, context=None, client=client)
    with run_asgi_app(app) as base_url:
        sync = httpx.put(f"{base_url}/api/inngest", timeout=WAIT)
        assert sync.status_code == 200, sync.text
        dispatcher = InngestDispatcher(client)
        try:
            dispatcher.dispatch_sync(greet, {"name": "real server"})
        finally:
            dispatcher.close()
        deadline = time.monotonic() + WAIT
        while not done and time.monotonic() < deadline:
            time.sleep(0.1)
    assert done == ["real server"]
