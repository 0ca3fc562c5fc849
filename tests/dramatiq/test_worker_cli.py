"""The two ways to start a Dramatiq worker for a registry, as subprocesses:
`python -m jobs_core worker` (JOBS_BACKEND=dramatiq, which runs Dramatiq's own command) and
`dramatiq module` with a module of the app's."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from jobs_core.backends.dramatiq import DramatiqDispatcher
from tests.dramatiq.app import DONE, work
from tests.dramatiq.workers import WorkerProcesses, wait_for, worker_processes

pytestmark = pytest.mark.timeout(120)


def _run_jobs(
    workers: WorkerProcesses, worker: subprocess.Popen[bytes], store: Any, count: int, by: str
) -> None:
    """Dispatch `count` jobs to the workers' queue; wait until `store` records them all done
    by `worker` (started by the command `by`)."""
    dispatcher = DramatiqDispatcher(workers.broker_url, workers.queue)
    try:
        dispatcher.dispatch_many_sync([(work, {"n": n, "seconds": 0.0}) for n in range(count)])
    finally:
        dispatcher.close()
    store_client = store.client()
    wait_for(
        lambda: store_client.scard(DONE) == count,
        60,
        f"{count} jobs run by `{by}`",
        lambda: workers.output(worker)[-3000:],
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_jobs_core_worker_command(redis_server: Any, store: Any, processes: int) -> None:
    broker_url = redis_server.url_for_db(0)
    with worker_processes(broker_url, store.url, "cli") as workers:
        worker = workers.start_jobs_core_worker(
            "--processes", str(processes), "--threads", "2", "--worker-timeout", "100"
        )
        _run_jobs(workers, worker, store, 40, by="python -m jobs_core worker")
        assert workers.terminate(worker) == 0, workers.output(worker)
        output = workers.output(worker)  # Dramatiq's own command ran the worker processes
        assert "is booting up" in output
        assert output.count("Worker process is ready for action.") == processes, output


def test_native_dramatiq_cli(redis_server: Any, store: Any) -> None:
    broker_url = redis_server.url_for_db(0)
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
        _run_jobs(workers, worker, store, 20, by="dramatiq tests.dramatiq.cli_app")
        assert workers.terminate(worker, timeout=30) == 0, workers.output(worker)
