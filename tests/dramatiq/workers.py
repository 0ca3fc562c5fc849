"""Start and stop subprocess Dramatiq workers for the backend-specific tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import QueueJoinTimeout

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcesses:
    """Every worker a test starts; `close()` stops whatever is still running (bounded)."""

    def __init__(self, broker_url: str, store_url: str, queue: str) -> None:
        self.broker_url = broker_url
        self.store_url = store_url
        self.queue = queue
        self.procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "JOBS_BACKEND": "dramatiq",
            "JOBS_BROKER_URL": self.broker_url,
            "JOBS_QUEUE": self.queue,
            "DURABILITY_REDIS_URL": self.store_url,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(
            list(cmd),
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((proc, log))
        return proc

    def start_jobs_core_worker(self, *options: str) -> subprocess.Popen[bytes]:
        """`python -m jobs_core worker` for tests/dramatiq/app.py, with worker options."""
        return self.start(
            [
                sys.executable,
                "-m",
                "jobs_core",
                "worker",
                "tests.dramatiq.app:jobs",
                "--context",
                "tests.dramatiq.app:create_context",
                "--",
                *options,
            ]
        )

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        for p, log in self.procs:
            if p is proc:
                log.seek(0)
                return log.read().decode(errors="replace")
        return ""

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker's whole process group (no graceful anything) and reap it."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def terminate(self, proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
        """SIGTERM (graceful stop) and wait; SIGKILL if it overruns. Returns the exit code."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill(proc)
                raise AssertionError(f"worker {proc.pid} did not stop within {timeout}s") from None
        return proc.returncode

    def close(self) -> None:
        for proc, log in self.procs:
            if proc.poll() is None:
                self.kill(proc)
            log.close()
        self.procs.clear()


@contextmanager
def worker_processes(broker_url: str, store_url: str, queue: str) -> Iterator[WorkerProcesses]:
    workers = WorkerProcesses(broker_url, store_url, queue)
    try:
        yield workers
    finally:
        workers.close()


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, on_timeout: Callable[[], Any] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; {on_timeout()}")
        time.sleep(0.05)


def drain_queue(broker_url: str, queue: str, timeout: float = 60.0) -> None:
    """Dramatiq's own drain, from outside the workers: `RedisBroker.join(queue)` until neither
    the queue nor its delay queue holds a message in Redis, delivered or not (a message stays
    in the queue's hash until its worker acks it; a retry is enqueued before the message it
    replaces is acked). Once it returns nothing more runs, unless something is sent again.
    Fails after `timeout` seconds."""
    client = redis.Redis.from_url(broker_url, socket_connect_timeout=5, socket_timeout=10)
    broker: Any = RedisBroker(client=client, middleware=[], maintenance_chance=0)
    try:
        broker.join(queue, interval=20, timeout=int(timeout * 1000))
    except QueueJoinTimeout:
        raise AssertionError(f"dramatiq queue {queue!r} still busy after {timeout}s") from None
    finally:
        broker.close()
        client.close()
