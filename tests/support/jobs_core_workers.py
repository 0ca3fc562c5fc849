"""`python -m jobs_core worker` subprocesses for kill tests: started in their own process
group, SIGKILLed as a whole, always stopped on exit (their output printed on a failure)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tests.support.processes import stop_process

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def jobs_core_workers(
    env: dict[str, str], registry: str, context: str, worker_args: Sequence[str]
) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """`start()` starts `python -m jobs_core worker <registry> --context <context> -- <args>`
    with `env`; every worker started is stopped on exit."""
    started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start() -> subprocess.Popen[bytes]:
        log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "jobs_core", "worker", registry, "--context", context]
        process = subprocess.Popen(
            [*command, "--", *worker_args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append((process, log))
        return process

    try:
        yield start
    except BaseException:
        for _, log in started:
            log.seek(0)
            print(log.read().decode(errors="replace")[-3000:])
        raise
    finally:
        for process, log in started:
            stop_process(process)
            log.close()


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its children at once (nothing acks, nothing cleans up)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(10)
