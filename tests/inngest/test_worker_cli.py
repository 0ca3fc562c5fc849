"""`python -m jobs_core worker` with `JOBS_BACKEND=inngest`: serves the registry over HTTP with
uvicorn, and a job dispatched to the stand-in Event API runs in that process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import inngest
import pytest

from jobs_core.backends.inngest import InngestDispatcher
from tests.inngest.app import greet
from tests.inngest_harness import InngestHarness
from tests.support.redis_server import free_port

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0


def _wait_listening(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the worker exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"the worker did not listen on {url} within {timeout}s")


def test_worker_command_serves_the_jobs_and_runs_them() -> None:
    with InngestHarness() as harness:
        port = free_port()
        env = {
            **os.environ,
            "JOBS_BACKEND": "inngest",
            "INNGEST_APP_NAME": "cli-app",
            "INNGEST_DEV": "1",
            "INNGEST_API_BASE_URL": harness.api_url,
            "INNGEST_EVENT_API_BASE_URL": harness.event_api_url,
            "PYTHONPATH": str(ROOT),
        }
        command = [
            sys.executable, "-m", "jobs_core", "worker", "tests.inngest.app:jobs",
            "--context", "tests.inngest.app:make_context",
            "--", "--port", str(port), "--path", "/jobs/inngest", "--log-level", "warning",
        ]  # fmt: skip
        process = subprocess.Popen(command, env=env, cwd=ROOT)
        try:
            url = f"http://127.0.0.1:{port}/jobs/inngest"
            _wait_listening(url, process, WAIT)
            [fn] = harness.register_app(url)
            assert fn.id == "cli-app-inngest.greet" and fn.retries == 0

            client = inngest.Inngest(app_id="cli-app", **harness.client_kwargs())
            dispatcher = InngestDispatcher(client)
            try:
                receipt = dispatcher.dispatch_sync(greet, {"name": "from the cli"})
            finally:
                dispatcher.close()
            [run] = harness.wait_for_runs(1, timeout=WAIT)
            assert run.status == "completed", run
            assert run.event["id"] == receipt.dispatch_id
            assert run.event["data"] == {"name": "from the cli"}
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
