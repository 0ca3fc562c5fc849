"""`on_failure` exactly once on Inngest, even when the last attempt dies with its process.

The worker process is killed (SIGKILL) during the job's last attempt: the stand-in, like the
real server, fails the run and emits `inngest/function.failed`; the SDK's failure function, now
served by the replacement process (a restarted replica), runs the job's `on_failure` once with
a `WorkerLostError`. A give-up the core made itself is not reported twice (the core's give-up
is recognised in the failed event): see test_server_rules.py and the conformance C11/C13.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import inngest
import pytest

from jobs_core.backends.inngest import InngestDispatcher
from tests.inngest.crash_app import crash
from tests.inngest_harness import InngestHarness
from tests.support.redis_server import free_port

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0


@contextlib.contextmanager
def worker_process(
    harness: InngestHarness, log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m jobs_core worker` serving tests.inngest.crash_app on a free port."""
    port = free_port()
    env = {
        **os.environ,
        "JOBS_BACKEND": "inngest",
        "INNGEST_APP_NAME": "crash-app",
        "INNGEST_DEV": "1",
        "INNGEST_API_BASE_URL": harness.api_url,
        "INNGEST_EVENT_API_BASE_URL": harness.event_api_url,
        "PYTHONPATH": str(ROOT),
        "CRASH_LOG": str(log),
    }
    command = [
        sys.executable, "-m", "jobs_core", "worker", "tests.inngest.crash_app:jobs",
        "--", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/api/inngest"
    try:
        _wait_for(lambda: _listening(url, process), f"the worker at {url}")
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _listening(url: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"the worker exited with {process.returncode}")
    try:
        httpx.get(url, timeout=1.0)
    except httpx.TransportError:
        return False
    return True


def _wait_for(done: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_on_failure_runs_once_when_the_last_attempt_dies_with_its_process(tmp_path: Path) -> None:
    log = tmp_path / "crash.log"
    with InngestHarness() as harness, worker_process(harness, log) as (first_url, first):
        harness.register_app(first_url)
        client = inngest.Inngest(app_id="crash-app", **harness.client_kwargs())
        dispatcher = InngestDispatcher(client)
        try:
            receipt = dispatcher.dispatch_sync(crash, {"name": "doomed"})
        finally:
            dispatcher.close()
        _wait_for(lambda: any(line.startswith("blocking") for line in _lines(log)), "attempt 1")

        with worker_process(harness, log) as (second_url, second):
            harness.register_app(second_url)  # the replacement replica, synced
            os.kill(first.pid, signal.SIGKILL)  # the worker dies in the job's last attempt
            first.wait(timeout=10)
            [run] = harness.wait_for_runs(1, timeout=WAIT, function_id="crash-app-crash.job")
            failure_id = "crash-app-crash.job-failure"
            [failure_run] = harness.wait_for_runs(1, timeout=WAIT, function_id=failure_id)
            reports = [line for line in _lines(log) if line.startswith("on_failure")]

    assert run.status == "failed" and run.attempt_numbers == [0, 1]
    assert run.attempts[-1].status_code is None  # no answer: the process was killed
    assert run.event["id"] == receipt.dispatch_id
    assert failure_run.status == "completed"
    assert failure_run.event["data"]["run_id"] == run.run_id
    assert reports == [f"on_failure WorkerLostError doomed pid={second.pid}"]
    assert sum(line.startswith("start") for line in _lines(log)) == 2
