"""The two ways to start a Dramatiq worker for a registry, as subprocesses:
`python -m jobs_core worker` (JOBS_BACKEND=dramatiq, which runs Dramatiq's own command) and
`dramatiq module` with a module of the app's."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from jobs_core.backends.dramatiq import DramatiqDispatcher
from tests.dramatiq.app import DONE, work
from tests.dramatiq.workers import wait_for, worker_processes

pytestmark = pytest.mark.timeout(120)


def _run_jobs(broker_url: str, queue: str, count: int) -> None:
    dispatcher = DramatiqDispatcher(broker_url, queue)
    try:
        dispatcher.dispatch_many_sync([(work, {"n": n, "seconds": 0.0}) for n in range(count)])
    finally:
        dispatcher.close()


@pytest.mark.parametrize("processes", [1, 2])
def test_jobs_core_worker_command(redis_server: Any, store: Any, processes: int) -> None:
    broker_url, store_client = redis_server.url_for_db(0), store.client()
    with worker_processes(broker_url, store.url, "cli") as workers:
        worker = workers.start_jobs_core_worker(
            "--processes", str(processes), "--threads", "2", "--worker-timeout", "100"
        )
        _run_jobs(broker_url, "cli", 40)
        wait_for(
            lambda: store_client.scard(DONE) == 40,
            60,
            "40 jobs run by `python -m jobs_core worker`",
            lambda: workers.output(worker)[-3000:],
        )
        assert workers.terminate(worker) == 0, workers.output(worker)
        output = workers.output(worker)  # Dramatiq's own command ran the worker processes
        assert "is booting up" in output
        assert output.count("Worker process is ready for action.") == processes, output


def test_native_dramatiq_cli(redis_server: Any, store: Any) -> None:
    broker_url, store_client = redis_server.url_for_db(0), store.client()
    with worker_processes(broker_url, store.url, "native") as workers:
        worker = workers.start(
            [
                sys.executable,
                "-m",
                "dramatiq",
                "tests.dramatiq.cli_app",
                "--processes",
                "1",
                "--threads",
                "2",
            ]
        )
        _run_jobs(broker_url, "native", 20)
        wait_for(
            lambda: store_client.scard(DONE) == 20,
            60,
            "20 jobs run by `dramatiq tests.dramatiq.cli_app`",
            lambda: workers.output(worker)[-3000:],
        )
        assert workers.terminate(worker, timeout=30) == 0, workers.output(worker)
