"""C20 and C21 on the Celery backend, with real worker processes and a real Redis broker.

Workers run tests/celery/app.py; each job records its start and its completion in a second
Redis server (the "store"), apart from the broker, so that restarting the broker keeps the
record. Crash recovery is made fast for the test: `visibility_timeout` 3 s and an unacked
restore sweep every second (production: 2 h and ~100 s, see backends/celery.py).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_core.backends.celery import CeleryDispatcher
from tests.celery.app import DONE, STARTED, work
from tests.celery.workers import wait_for, worker_processes

pytestmark = pytest.mark.timeout(240)

FAST_RECOVERY = ("--visibility-timeout", "3", "--restore-interval", "1")


@pytest.fixture
def store() -> Iterator[Any]:
    from tests.support.redis_server import RedisServer

    with RedisServer() as server:
        yield server


def _done(client: Any) -> set[int]:
    return {int(n) for n in client.smembers(DONE)}


def _started(client: Any) -> set[int]:
    return {int(n) for n in client.hkeys(STARTED)}


def _dispatch(dispatcher: CeleryDispatcher, numbers: range, seconds: float) -> None:
    items = [(work, {"n": n, "seconds": seconds}) for n in numbers]
    for i in range(0, len(items), 250):
        dispatcher.dispatch_many_sync(items[i : i + 250])


def test_C20_sigkilled_workers_lose_no_job(redis_server: Any, store: Any, tmp_path: Path) -> None:
    total = 1000
    broker_url, client = redis_server.url_for_db(0), store.client()
    dispatcher = CeleryDispatcher(broker_url, "c20")
    try:
        _dispatch(dispatcher, range(total), seconds=0.02)
    finally:
        dispatcher.close()

    def progress() -> str:
        missing = sorted(set(range(total)) - _done(client))[:10]
        never_started = [n for n in missing if n not in _started(client)]
        return f"done={len(_done(client))} of {total}, missing {missing}, never started {never_started}"

    with worker_processes(broker_url, store.url, "c20", tmp_path) as workers:
        killed_mid_run: set[int] = set()
        for target in (150, 450):
            worker = workers.start_jobs_core_worker(
                "--pool", "threads", "--concurrency", "8", *FAST_RECOVERY
            )
            wait_for(
                lambda target=target: len(_done(client)) >= target,  # type: ignore[misc]
                60,
                f"{target} jobs done before the kill",
                progress,
            )
            workers.kill(worker)  # SIGKILL mid-run: 8 threads busy with 20 ms jobs
            killed_mid_run |= _started(client) - _done(client)
        assert killed_mid_run, "the kills should catch jobs in the middle of their run"

        workers.start_jobs_core_worker("--pool", "threads", "--concurrency", "8", *FAST_RECOVERY)
        kills = 2
        wait_for(lambda: len(_done(client)) >= total - kills, 90, "every job to complete", progress)
        try:  # the last ones may still be on their way back from a dead worker
            wait_for(lambda: len(_done(client)) == total, 15, "the stragglers", progress)
        except AssertionError:
            pass
    lost = set(range(total)) - _done(client)
    # kombu's Redis transport takes a message off the queue (BRPOP) and records it as unacked in
    # a second command: a SIGKILL between the two loses that one message before it ever starts
    # (seen in 2 of 4 runs, 999 of 1000; README). Anything beyond that window is a regression.
    assert len(lost) <= kills, f"lost {sorted(lost)}: more than one per SIGKILL"
    assert not lost & _started(client), f"jobs that had started were lost: {sorted(lost)}"
    assert killed_mid_run <= _done(client), "the jobs killed mid-run ran again and completed"


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    try:
        with open(path) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def test_C20_prefork_child_killed_mid_job_is_requeued_at_once(
    redis_server: Any, store: Any, tmp_path: Path
) -> None:
    """`task_reject_on_worker_lost`: a killed pool child's job comes back at once, without
    waiting for the visibility timeout (set to 1 h here to show it)."""
    broker_url, client = redis_server.url_for_db(0), store.client()
    with worker_processes(broker_url, store.url, "c20p", tmp_path) as workers:
        worker = workers.start_jobs_core_worker(
            "--pool", "prefork", "--concurrency", "2", "--visibility-timeout", "3600"
        )
        dispatcher = CeleryDispatcher(broker_url, "c20p", visibility_timeout=3600)
        try:
            dispatcher.dispatch_sync(work, {"n": 1, "seconds": 3.0})
            wait_for(lambda: 1 in _started(client), 60, "the slow job to start")
            child = int(client.hget(STARTED, "1"))
            assert child in _children(worker.pid), "the job runs in a pool child"
            os.kill(child, 9)
            started = time.monotonic()
            wait_for(lambda: _done(client) == {1}, 30, "the killed job to run again")
            assert time.monotonic() - started < 20
            assert int(client.hget(STARTED, "1")) != child, "it ran again in another child"
        finally:
            dispatcher.close()
        assert worker.poll() is None, "the worker itself goes on"


def test_C21_broker_restart_workers_reconnect(
    redis_server: Any, store: Any, tmp_path: Path
) -> None:
    broker_url, client = redis_server.url_for_db(0), store.client()
    with worker_processes(broker_url, store.url, "c21", tmp_path) as workers:
        # The native Celery CLI here (C20 uses `python -m jobs_core worker`).
        worker = workers.start_celery_cli_worker(
            "--pool", "threads", "--concurrency", "4", "--loglevel", "INFO"
        )
        dispatcher = CeleryDispatcher(broker_url, "c21")
        try:
            _dispatch(dispatcher, range(100), seconds=0.01)
            wait_for(lambda: len(_done(client)) == 100, 60, "the jobs sent before the restart")

            redis_server.restart()  # same port; the worker and the dispatcher must reconnect
            deadline = time.monotonic() + 30
            while True:  # the first dispatch after the restart may find a dead connection
                try:
                    _dispatch(dispatcher, range(100, 200), seconds=0.01)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            wait_for(
                lambda: len(_done(client)) == 200,
                90,
                "the jobs sent after the restart",
                lambda: f"done={len(_done(client))}",
            )
        finally:
            dispatcher.close()
        assert worker.poll() is None, "the same worker process reconnected"
    assert _done(client) == set(range(200))


def test_worker_cli_stops_cleanly_on_sigterm(redis_server: Any, store: Any, tmp_path: Path) -> None:
    broker_url, client = redis_server.url_for_db(0), store.client()
    with worker_processes(broker_url, store.url, "cli", tmp_path) as workers:
        worker = workers.start_jobs_core_worker("--pool", "threads", "--concurrency", "2")
        dispatcher = CeleryDispatcher(broker_url, "cli")
        try:
            dispatcher.dispatch_sync(work, {"n": 7})
            wait_for(lambda: _done(client) == {7}, 60, "the job run by the CLI worker")
        finally:
            dispatcher.close()
        worker.send_signal(15)
        try:
            code = worker.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker did not stop within 20 s of SIGTERM")
        assert code == 0, workers.logs()
