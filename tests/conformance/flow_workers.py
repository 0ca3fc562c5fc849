"""Celery and Dramatiq worker processes of `tests.conformance.flow_app`, for C25 and C26.

`python -m jobs_core worker` as a user starts it, one process group each; every process is
killed on `close()`, and every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.conformance.flow_app"

OPTIONS = {
    "celery": ["--pool", "threads", "--concurrency", "4", "--without-mingle", "--without-gossip"],
    "dramatiq": ["--worker-timeout", "50", "--threads", "4"],
}
"""Four threads a process, so that the limits, not the pools, hold the runs back."""

READY = {"celery": "ready.", "dramatiq": "is ready for action"}
"""What each worker prints once it takes messages."""


class FlowWorkers:
    """Worker processes of one backend on one broker and queue."""

    def __init__(self, backend: str, broker_url: str, queue: str, env: dict[str, str]) -> None:
        self.backend = backend
        self.env = {
            **os.environ,
            **env,
            "JOBS_BACKEND": backend,
            "JOBS_BROKER_URL": broker_url,
            "JOBS_QUEUE": queue,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
        }
        self.processes: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self) -> subprocess.Popen[bytes]:
        """Start one worker and wait (30 s at most) until it takes messages."""
        log = tempfile.TemporaryFile()
        options = list(OPTIONS[self.backend])
        if self.backend == "celery":
            options += ["-n", f"flow{len(self.processes)}-{os.getpid()}@%h"]
        command = [sys.executable, "-m", "jobs_core", "worker", f"{APP}:jobs"]
        process = subprocess.Popen(
            [*command, "--context", f"{APP}:create_context", "--", *options],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append((process, log))
        deadline = time.monotonic() + 30
        while READY[self.backend] not in self.output(process):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.backend} worker did not start:\n{self.output(process)}"
                )
            time.sleep(0.05)
        return process

    def output(self, process: subprocess.Popen[bytes]) -> str:
        for p, log in self.processes:
            if p is process:
                log.seek(0)
                return log.read().decode(errors="replace")
        return ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.pid}\n{self.output(p)[-3000:]}" for p, _ in self.processes)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker's process group: nothing gets to release or acknowledge."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(10)

    def close(self) -> None:
        for process, log in self.processes:
            if process.poll() is None:
                self.kill(process)
            log.close()
        self.processes.clear()
