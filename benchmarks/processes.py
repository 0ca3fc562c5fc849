"""Worker subprocesses of a benchmark: started in their own process group, always stopped,
their CPU time read from /proc (the whole group: the `dramatiq` command forks its workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from .machine import ROOT

PYTHON = sys.executable
JOBS_CORE_WORKER = [PYTHON, "-m", "jobs_core", "worker", "benchmarks.jobs:jobs"]
JOBS_CORE_WORKER += ["--context", "benchmarks.jobs:COUNTER"]
"""jobs_core's documented worker command for the benchmark's registry (JOBS_BACKEND picks the
backend), with the shared completion counter as the jobs' context."""


class WorkerProcess:
    """A subprocess in its own process group, with its output in a temporary file.

    `stop()` sends SIGTERM to the group, waits (bounded), then SIGKILLs it; it is safe to call
    more than once. Use it as a context manager so that the process is stopped on any exit.
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float | None:
        """CPU seconds used so far by every live process of the group (None without /proc)."""
        return None if self.process is None else group_cpu_seconds(self.process.pid)

    def log_size(self) -> int:
        """Bytes the process has written to its output so far."""
        return 0 if self.log is None else os.fstat(self.log.fileno()).st_size

    def output(self, limit: int = 4000) -> str:
        if self.log is None:
            return ""
        self.log.seek(0, os.SEEK_END)
        size = self.log.tell()
        self.log.seek(max(0, size - limit))
        return self.log.read().decode(errors="replace")

    def check(self) -> str | None:
        """For `wait_until`: a message when the process has exited, else None."""
        if self.alive():
            return None
        return f"{' '.join(self.args[:6])} exited; its output:\n{self.output()}"

    def stop(self, grace: float = 15.0) -> None:
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait(grace)
        finally:
            if self.log is not None:
                self.log.close()
                self.log = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _stat_fields(pid: str) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # the fields after the command name, from field 3


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU seconds of the live processes of process group `pgid`."""
    if not Path("/proc/self/stat").exists():
        return None
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is not None and int(fields[2]) == pgid:  # field 5: pgrp
            ticks += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")
