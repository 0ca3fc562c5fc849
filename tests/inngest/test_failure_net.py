"""`on_failure` exactly once on Inngest, even when the last attempt dies with its process.

The worker process is killed (SIGKILL) during the job's last attempt: the stand-in, like the
real server, fails the run and emits `inngest/function.failed`; the SDK's failure function, now
served by the replacement process (a restarted replica), runs the job's `on_failure` once with
a `WorkerLostError`. A give-up the core made itself is not reported twice (the core's give-up
is recognised in the failed event): see test_server_rules.py and the conformance C11/C13.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import inngest
import pytest

from jobs_core.backends.inngest import InngestDispatcher
from tests.inngest.crash_app import crash
from tests.inngest.workers import worker_process
from tests.inngest_harness import InngestHarness, Run
from tests.support.redis_server import free_port

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0


def _wait_for(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _crash_app(harness: InngestHarness, log: Path, port: int | None = None) -> Any:
    env = {"CRASH_LOG": str(log)}
    registry = "tests.inngest.crash_app:jobs"
    return worker_process(harness, registry, app_name="crash-app", env=env, port=port)


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_on_failure_runs_once_when_the_last_attempt_dies_with_its_process(tmp_path: Path) -> None:
    log = tmp_path / "crash.log"
    with InngestHarness() as harness, _crash_app(harness, log) as (first_url, first):
        harness.register_app(first_url)
        client = inngest.Inngest(app_id="crash-app", **harness.client_kwargs())
        with closing(InngestDispatcher(client)) as dispatcher:
            receipt = dispatcher.dispatch_sync(crash, {"name": "doomed"})
        _wait_for(lambda: any(line.startswith("blocking") for line in _lines(log)), "attempt 1")

        with _crash_app(harness, log) as (second_url, second):
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


def test_on_failure_runs_when_the_only_worker_dies_in_the_last_attempt(tmp_path: Path) -> None:
    """No other replica: the failure function's first call is refused while the worker is
    down; the server retries it, and the restarted worker (same port) runs the hook once."""
    log = tmp_path / "crash.log"
    port = free_port()
    failure_id = "crash-app-crash.job-failure"
    # The failure function's 4 retries 2 s apart: 8 s for the replacement process to start on
    # a loaded machine (retries 0.2 s apart, doubling, gave it 3 s: not always enough).
    with InngestHarness(retry_delay=2.0) as harness:
        with _crash_app(harness, log, port=port) as (url, first):
            [_, net] = harness.register_app(url)
            assert net.id == failure_id and net.retries > 0
            client = inngest.Inngest(app_id="crash-app", **harness.client_kwargs())
            with closing(InngestDispatcher(client)) as dispatcher:
                dispatcher.dispatch_sync(crash, {"name": "doomed"})
            _wait_for(lambda: any(line.startswith("blocking") for line in _lines(log)), "attempt 1")
            os.kill(first.pid, signal.SIGKILL)  # the only worker dies in the job's last attempt
            first.wait(timeout=10)

            def refused(runs: Sequence[Run]) -> bool:
                calls = [a for r in runs if r.function_id == failure_id for a in r.attempts]
                return any(a.finished_at for a in calls)

            harness.wait_for_runs(refused, timeout=WAIT)  # called while nobody listens
        with _crash_app(harness, log, port=port) as (_, second):  # restarted by a supervisor
            [failure_run] = harness.wait_for_runs(1, timeout=WAIT, function_id=failure_id)
            reports = [line for line in _lines(log) if line.startswith("on_failure")]

    assert failure_run.status == "completed"
    assert failure_run.attempts[0].status_code is None  # refused: the worker was down
    assert reports == [f"on_failure WorkerLostError doomed pid={second.pid}"]
