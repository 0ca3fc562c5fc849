"""`python -m jobs_core worker` with `JOBS_BACKEND=inngest`, as a child process of a test."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.inngest_harness import InngestHarness
from tests.support.processes import stop_process
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def worker_process(
    harness: InngestHarness,
    registry: str,
    *options: str,
    app_name: str,
    path: str = "/api/inngest",
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
    port: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Serve `registry` (`module:name`) on `port` (default: a free one), in dev mode against
    `harness`; yield the serve URL once it answers, and the process. Stopped on exit."""
    port = port or free_port()
    environment = {
        **os.environ,
        "JOBS_BACKEND": "inngest",
        "INNGEST_APP_NAME": app_name,
        "INNGEST_DEV": "1",
        "INNGEST_API_BASE_URL": harness.api_url,
        "INNGEST_EVENT_API_BASE_URL": harness.event_api_url,
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    command = [sys.executable, "-m", "jobs_core", "worker", registry, *options, "--"]
    command += ["--port", str(port), "--path", path, "--log-level", "warning"]
    process = subprocess.Popen(command, env=environment, cwd=ROOT)
    url = f"http://127.0.0.1:{port}{path}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the worker exited with {process.returncode}")
            try:
                httpx.get(url, timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the worker did not listen on {url}") from None
                time.sleep(0.05)
        yield url, process
    finally:
        stop_process(process)
