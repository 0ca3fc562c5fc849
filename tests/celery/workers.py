"""Celery worker subprocesses for the durability and CLI tests: started, SIGKILLed, stopped.

Every process started here is stopped on exit (SIGTERM, then SIGKILL after a grace period),
and every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    progress: Callable[[], str] | None = None,
) -> None:
    """Poll `predicate` until it holds; fail with `what` (and the progress) after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            extra = f" ({progress()})" if progress else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(0.05)


class WorkerProcesses:
    """Starts Celery workers for tests/celery/app.py against one broker and one store."""

    def __init__(
        self,
        broker_url: str,
        store_url: str,
        queue: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = {
            **os.environ,
            "JOBS_BACKEND": "celery",
            "JOBS_BROKER_URL": broker_url,
            "JOBS_QUEUE": queue,
            "CELERY_TEST_STORE_URL": store_url,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *command: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"worker-{len(self.processes)}.log", "wb")
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() reaches prefork children
        )
        log.close()
        self.processes.append(process)
        return process

    def start_jobs_core_worker(self, *options: str) -> subprocess.Popen[bytes]:
        """`python -m jobs_core worker tests.celery.app:jobs --context ...` (JOBS_BACKEND=celery)."""
        return self.start(
            PYTHON,
            "-m",
            "jobs_core",
            "worker",
            "tests.celery.app:jobs",
            "--context",
            "tests.celery.app:create_context",
            *options,
        )

    def start_celery_cli_worker(self, *options: str) -> subprocess.Popen[bytes]:
        """The native `celery -A tests.celery.app:celery_app worker`, with a node name of its
        own (two workers of one name on one RabbitMQ: the second stops, its remote-control
        queue being the first one's)."""
        name = ("-n", f"w{len(self.processes)}@%h")
        return self.start(
            PYTHON, "-m", "celery", "-A", "tests.celery.app:celery_app", "worker", *name, *options
        )

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its children, mid-run: nothing gets to ack or clean up."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(10)

    def stop_all(self, grace: float = 10.0) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + grace
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(process)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.log_dir.glob("worker-*.log"))
        )


@contextmanager
def worker_processes(
    broker_url: str,
    store_url: str,
    queue: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
) -> Iterator[WorkerProcesses]:
    """Workers for tests/celery/app.py; `env` adds to their environment (the transport)."""
    workers = WorkerProcesses(broker_url, store_url, queue, log_dir, env)
    try:
        yield workers
    except BaseException:
        print(workers.logs())
        raise
    finally:
        workers.stop_all()


def store_sets(client: Any, done_key: str) -> set[int]:
    return {int(n) for n in client.smembers(done_key)}
