"""What the new-user tests that run a real worker share: a clean environment, a worker process
that logs to a file and is stopped whatever happened, and waits that show that log on failure."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.dramatiq.workers import wait_for as poll
from tests.support.processes import stop_group


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without its jobs_core settings (`JOBS_*`, and the `JOB_*`
    typos a new user makes), plus `extra`: what a user's shell would give the command."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(("JOBS_", "JOB_"))}
    return {**clean, **extra}


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, log: Path, tail: int = 4000
) -> None:
    """`tests.dramatiq.workers.wait_for`, failing with the last `tail` characters of the
    worker's `log`."""
    poll(predicate, timeout, what, lambda: "\n" + log.read_text()[-tail:])


@contextmanager
def process(
    command: list[str], cwd: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in a group of its own, logging to `log`; stopped (TERM, then KILL) on
    exit, whatever happened."""
    with log.open("wb") as out:
        child = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield child
    finally:
        stop_group(child, timeout=20, kill_timeout=10)
