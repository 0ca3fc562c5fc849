"""Celery and Dramatiq worker processes of `tests.conformance.flow_app`, for C25 and C26.

`python -m jobs_core worker` as a user starts it, one process group each (started and killed
by the Celery tests' `WorkerProcesses`); every wait has a deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.celery.workers import WorkerProcesses

APP = "tests.conformance.flow_app"

OPTIONS = {
    "celery": ["--pool", "threads", "--concurrency", "4", "--without-mingle", "--without-gossip"],
    "dramatiq": ["--worker-timeout", "50", "--threads", "4"],
}
"""Four threads a process, so that the limits, not the pools, hold the runs back."""

READY = {"celery": "ready.", "dramatiq": "is ready for action"}
"""What each worker prints once it takes messages."""


class FlowWorkers:
    """Worker processes of one backend on one broker and queue; `close()` kills them all."""

    def __init__(self, backend: str, broker_url: str, queue: str, env: dict[str, str]) -> None:
        self.backend = backend
        self.log_dir = Path(tempfile.mkdtemp(prefix="jobs-core-flow-"))
        self.workers = WorkerProcesses(broker_url, "", queue, self.log_dir)
        self.workers.env.update(env, JOBS_BACKEND=backend, PYTHONUNBUFFERED="1")

    def start(self) -> subprocess.Popen[bytes]:
        """Start one worker and wait (30 s at most) until it takes messages."""
        options = list(OPTIONS[self.backend])
        log = self.log_dir / f"worker-{len(self.workers.processes)}.log"
        if self.backend == "celery":
            options += ["-n", f"flow-{log.stem}-{os.getpid()}@%h"]
        command = [sys.executable, "-m", "jobs_core", "worker", f"{APP}:jobs"]
        process = self.workers.start(*command, "--context", f"{APP}:create_context", "--", *options)
        deadline = time.monotonic() + 30
        while READY[self.backend] not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.backend} worker did not start:\n{self.logs()}")
            time.sleep(0.05)
        return process

    def logs(self) -> str:
        return self.workers.logs()

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker's process group: nothing gets to release or acknowledge."""
        self.workers.kill(process)

    def close(self) -> None:
        for process in self.workers.processes:
            self.workers.kill(process)
        shutil.rmtree(self.log_dir, ignore_errors=True)
