"""C20 and C21 on the Celery backend, with real worker processes and real brokers.

Workers run tests/celery/app.py as a user gets it (the adapter's defaults); each job records its
start and its completion in a second Redis server (the "store"), apart from the broker, so that
restarting the broker keeps the record. The kill and restart runs are those of
tests/celery/runs.py, once each here on the two zero-loss setups, RabbitMQ and the opt-in
reliable Redis transport, with the clause's 1,000 jobs (five each of 2,000, and kombu's own
transport, for the figures in docs/reliability-celery.md:
`python -m tests.celery.runs kill --broker rabbitmq --runs 5`).
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobs_core.backends.celery import CeleryDispatcher
from jobs_core.backends.celery.reliable_redis import DEFAULT_HEARTBEAT_TIMEOUT
from tests.celery.app import DONE, GO, RETRIED, RETRYING, STARTED, STARTS, retry_once, work
from tests.celery.runs import held_jobs, kill_run, restart_run
from tests.celery.workers import wait_for, worker_processes

pytestmark = pytest.mark.timeout(300)

BOUND = DEFAULT_HEARTBEAT_TIMEOUT * 1.1
"""The documented bound: a dead worker's jobs are given back once its heartbeat is
`heartbeat_timeout` old, checked every tenth of it (16.5 s by default)."""
LOAD_SLACK = 8.0
"""Room for a machine whose 2 cores are shared (the bound is a property of the design)."""


def _done(client: Any) -> set[int]:
    return {int(n) for n in client.smembers(DONE)}


def _started(client: Any) -> set[int]:
    return {int(n) for n in client.hkeys(STARTED)}


ZERO_LOSS = ["rabbitmq", "reliable-redis"]
JOBS = 1_000
"""Jobs per kill or restart run here: C20's "of 1,000 dispatched jobs ... none is lost" (the
kills and the restart come at the same shares of the run as with more)."""
RELIABLE = {"JOBS_CELERY_TRANSPORT": "reliable-redis"}


@pytest.mark.parametrize("setup", ZERO_LOSS)
def test_C20_sigkilled_workers_lose_no_job(setup: str, tmp_path: Path, report_figure: Any) -> None:
    """1,000 jobs; the worker's process group SIGKILLed twice mid-run: none is lost."""
    result = kill_run(setup, tmp_path, JOBS)
    report_figure(f"{setup}: {result.line()}")
    assert result.lost == [], result.line()
    assert all(n > 0 for n in result.held_at_kill), "each kill caught jobs it held"
    assert max(result.came_back) < BOUND + LOAD_SLACK, result.line()


@pytest.mark.parametrize("setup", ZERO_LOSS)
def test_C21_broker_restart_workers_reconnect(
    setup: str, tmp_path: Path, report_figure: Any
) -> None:
    """1,000 jobs, half dispatched before and half after the broker (with its data) is stopped
    for 3-5 s mid-run: every one completes and the workers reconnect (none stops)."""
    result = restart_run(setup, tmp_path, JOBS)
    report_figure(f"{setup}: {result.line()}")
    assert result.lost == [], result.line()
    assert result.workers_died == 0, result.line()


def test_C20_a_killed_workers_jobs_come_back_within_the_bound(
    redis_server: Any, store: Any, tmp_path: Path
) -> None:
    """The reliable Redis transport: what a SIGKILLed worker held (two jobs running, one
    waiting for its ETA) is given back within the documented bound and taken by the next
    worker, which runs the running ones again and keeps the ETA one waiting: not after the
    2 h visibility timeout."""
    broker_url, client, broker = redis_server.url, store.client(), redis_server.client()
    options = ("--pool", "threads", "--concurrency", "2")
    with worker_processes(broker_url, store.url, "bound", tmp_path, RELIABLE) as workers:
        dispatcher = CeleryDispatcher(broker_url, "bound")
        try:
            dispatcher.dispatch_sync(work, {"n": 0}, delay=timedelta(minutes=30))
            dispatcher.dispatch_many_sync([(work, {"n": n, "seconds": 4.0}) for n in (1, 2)])
        finally:
            dispatcher.close()
        first = workers.start_jobs_core_worker(*options)
        wait_for(lambda: {1, 2} <= _started(client), 60, "the two slow jobs to start")
        wait_for(lambda: held_jobs(broker) == {0, 1, 2}, 10, "the worker to hold all three")

        workers.kill(first)
        killed_at = time.time()
        second = workers.start_jobs_core_worker(*options)

        def started_again() -> set[int]:
            starts = (entry.decode().split(":") for entry in client.lrange(STARTS, 0, -1))
            return {int(n) for n, pid, at in starts if float(at) > killed_at}

        wait_for(lambda: {1, 2} <= started_again(), 60, "the killed jobs to start again")
        waited = time.time() - killed_at
        assert waited < BOUND + LOAD_SLACK, f"came back after {waited:.1f}s"
        assert int(client.hget(STARTED, "1")) == second.pid, "run again by the next worker"
        wait_for(lambda: {1, 2} <= _done(client), 30, "the killed jobs to complete")
        wait_for(lambda: held_jobs(broker) == {0}, 10, "the next worker to hold the ETA job")
        assert 0 not in _started(client), "the ETA job waits for its time"
        print(f"killed worker's jobs started again {waited:.1f}s after the kill")


def test_C21_a_retry_sent_while_the_broker_is_away_is_not_lost(store: Any, tmp_path: Path) -> None:
    """A job asks for a retry while Redis is stopped: the retry waits for the broker and runs.
    Celery's own `Task.retry` gave up on the publish after 0.6 s and dropped the message."""
    from tests.support.redis_server import RedisServer

    client = store.client()
    with RedisServer(persistent=True) as broker_server:
        with worker_processes(broker_server.url, store.url, "away", tmp_path) as workers:
            dispatcher = CeleryDispatcher(broker_server.url, "away")
            try:
                dispatcher.dispatch_sync(retry_once, {"n": 7})
            finally:
                dispatcher.close()
            workers.start_jobs_core_worker("--pool", "threads", "--concurrency", "2")
            wait_for(lambda: client.hexists(RETRIED, "7"), 60, "the job's first run")
            broker_server.stop()
            client.set(GO, 1)
            wait_for(lambda: client.exists(RETRYING), 30, "the job to ask for its retry")
            time.sleep(2.0)  # the broker stays away well past Celery's own 0.6 s of retries
            broker_server.start()
            wait_for(lambda: 7 in _done(client), 90, "the retried job to complete")


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
