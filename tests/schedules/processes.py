"""Scheduler processes for tests: `python -m jobs_core scheduler ...`, its output read as it
comes, and a stop that sends SIGTERM (as an orchestrator does) and reports the exit code."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

from tests.conformance.harness import wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.schedules.app:jobs"
RUNNING = re.compile(r"scheduler running from (\S+):")


class SchedulerProcess:
    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobs_core", "scheduler", APP, *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def text(self) -> str:
        return "\n".join(self.output())

    def running_since(self, timeout: float = 60.0) -> datetime:
        """The (scheduler clock's) time of its first `run_pending`, once it logged it."""
        found: list[datetime] = []

        def started() -> bool:
            for line in self.output():
                match = RUNNING.search(line)
                if match:
                    found.append(datetime.fromisoformat(match.group(1)))
                    return True
            if self.process.poll() is not None:
                raise AssertionError(f"the scheduler exited early:\n{self.text()}")
            return False

        wait_until(started, timeout=timeout, what="the scheduler to start")
        return found[0]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; a process that does not stop in time is killed (and fails)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            code = -9
        self._reader.join(10)
        return code
