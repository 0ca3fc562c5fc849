"""C20 and C21 on the Dramatiq backend, with real worker processes and a real Redis.

The worker is `python -m jobs_core worker` (JOBS_BACKEND=dramatiq) running tests/dramatiq/app.py;
each job records its start and its completion in a second Redis server (the "store"), apart
from the broker, so that restarting the broker does not touch the record.
"""

from __future__ import annotations

from typing import Any

import pytest

from jobs_core.backends.dramatiq import DramatiqDispatcher
from tests.dramatiq.app import DONE, STARTED, work
from tests.dramatiq.workers import wait_for, worker_processes

pytestmark = pytest.mark.timeout(240)

# Fast crash recovery for the test: a worker silent for 3 s is dead, and every broker command
# may run maintenance (production defaults: 15 s and 5 %, see backends/dramatiq.py).
CRASH_OPTIONS = ("--heartbeat-timeout", "3000", "--maintenance-chance", "1000000")


def _done(store_client: Any) -> set[int]:
    return {int(n) for n in store_client.smembers(DONE)}


def _started(store_client: Any) -> dict[int, int]:
    return {int(k): int(v) for k, v in store_client.hgetall(STARTED).items()}


def _dispatch(dispatcher: DramatiqDispatcher, numbers: range, seconds: float) -> None:
    items = [(work, {"n": n, "seconds": seconds}) for n in numbers]
    for i in range(0, len(items), 250):
        dispatcher.dispatch_many_sync(items[i : i + 250])


def _in_flight(store_client: Any) -> set[int]:
    """Jobs that started and did not complete (read after the worker was killed)."""
    done = _done(store_client)
    return {n for n in _started(store_client) if n not in done}


def test_C20_sigkilled_workers_lose_no_job(redis_server: Any, store: Any) -> None:
    total = 1000
    broker_url, store_client = redis_server.url_for_db(0), store.client()
    dispatcher = DramatiqDispatcher(broker_url, "c20")
    try:
        _dispatch(dispatcher, range(total), seconds=0.03)
    finally:
        dispatcher.close()
    progress = lambda: f"done={len(_done(store_client))}"  # noqa: E731

    with worker_processes(broker_url, store.url, "c20") as workers:
        killed_mid_run: set[int] = set()
        for target in (150, 450):
            worker = workers.start_jobs_core_worker("--threads", "8", *CRASH_OPTIONS)
            wait_for(
                lambda target=target: len(_done(store_client)) >= target,  # type: ignore[misc]
                60,
                f"{target} jobs done before the kill",
                progress,
            )
            workers.kill(worker)  # SIGKILL, mid-run: 8 threads busy with 30 ms jobs
            in_flight = _in_flight(store_client)
            assert in_flight, "the kill should catch jobs in the middle of their run"
            killed_mid_run |= in_flight

        last = workers.start_jobs_core_worker("--threads", "8", *CRASH_OPTIONS)
        wait_for(
            lambda: len(_done(store_client)) == total,
            120,
            "every job to complete after the kills",
            lambda: f"{progress()} missing={sorted(set(range(total)) - _done(store_client))[:20]}",
        )
        assert workers.terminate(last) == 0, workers.output(last)

    assert _done(store_client) == set(range(total)), "no job is lost"
    started = _started(store_client)
    assert set(started) == set(range(total))
    rerun = {n for n in killed_mid_run if started[n] >= 2}
    assert rerun == killed_mid_run, "every job killed mid-run was run again"


def test_C21_broker_restart_while_worker_runs(redis_server: Any, store: Any) -> None:
    before, after = range(0, 300), range(300, 600)
    broker_url, store_client = redis_server.url_for_db(0), store.client()
    progress = lambda: f"done={len(_done(store_client))}"  # noqa: E731
    dispatcher = DramatiqDispatcher(broker_url, "c21")
    with worker_processes(broker_url, store.url, "c21") as workers:
        try:
            _dispatch(dispatcher, before, seconds=0.02)
            worker = workers.start_jobs_core_worker("--threads", "4", "--worker-timeout", "200")
            wait_for(lambda: len(_done(store_client)) >= 50, 60, "50 jobs before restart", progress)

            # A production broker persists its data; this private one saves on shutdown.
            # A production broker persists its data (AOF or RDB); this private one is told to
            # save on shutdown, and a sentinel key shows that the restart kept the data.
            broker_client = redis_server.client()
            broker_client.config_set("save", "3600 1")
            broker_client.set("c21:sentinel", "kept")
            done_at_restart = len(_done(store_client))
            redis_server.restart()  # same port; the worker's connections break
            assert redis_server.client().get("c21:sentinel") == b"kept", (
                "the broker lost its data in the restart: C21 needs a persisting broker"
            )
            assert worker.poll() is None, workers.output(worker)

            _dispatch(dispatcher, after, seconds=0.02)  # dispatch works again at once
            wait_for(
                lambda: len(_done(store_client)) == 600,
                120,
                "every job dispatched before and after the restart",
                lambda: f"{progress()} worker output:\n{workers.output(worker)[-3000:]}",
            )
            assert workers.terminate(worker) == 0, workers.output(worker)
        finally:
            dispatcher.close()
    assert done_at_restart < len(before), "jobs from before the restart were still queued"
    assert _done(store_client) == set(range(600))
