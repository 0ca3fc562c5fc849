"""A registry whose job blocks in its last attempt, for the crash test of the failure safety
net (test_failure_net.py). Each worker process appends what it does to `$CRASH_LOG`."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from jobs_core import JobRegistry, Retry
from tests.inngest.app import Greeting

jobs: JobRegistry[Any] = JobRegistry()


def _log(line: str) -> int:
    path = Path(os.environ["CRASH_LOG"])
    with path.open("a") as file:
        file.write(line + "\n")
    return sum(1 for seen in path.read_text().splitlines() if seen.startswith("start"))


def reported(error: BaseException, payload: Any, ctx: Any) -> None:
    _log(f"on_failure {type(error).__name__} {payload.name} pid={os.getpid()}")


@jobs.job("crash.job", retry=Retry(attempts=1, min_backoff=timedelta(0)), on_failure=reported)
def crash(payload: Greeting, ctx: Any) -> None:
    if _log(f"start pid={os.getpid()}") == 1:
        raise RuntimeError("the first attempt fails")
    _log(f"blocking pid={os.getpid()}")  # the last attempt: the test kills this process now
    time.sleep(120)
