"""C40 across SIGKILLs: 1,000 events sent to a real worker (Celery on RabbitMQ, Dramatiq on
Redis), each triggering three jobs, the worker's process group SIGKILLed twice while they run
and a new worker started at once each time. All 3,000 runs complete (none lost), and a run
completes twice only if it was first delivered to a worker that was killed (delivery is at
least once: a kill between a run's end and its acknowledgement runs it again; the fan-out
itself sent each job once)."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import pytest

from jobs_core import JobsSettings, create_dispatcher
from tests.conformance.harness import wait_until
from tests.support.jobs_core_workers import jobs_core_workers, kill_group
from tests.support.redis_server import RedisServer

from .fanout_app import DONE, JOB_NAMES, STARTED, signed_up

pytestmark = pytest.mark.timeout(240)

EVENTS = 1_000
RUNS = EVENTS * len(JOB_NAMES)
QUEUE = "fanout-kill"


@pytest.mark.parametrize("backend", ["celery", "dramatiq"])
def test_fan_out_across_two_kills_loses_no_run(backend: str, report_figure: Any) -> None:
    with ExitStack() as stack:
        env = {"JOBS_BACKEND": backend, "JOBS_QUEUE": QUEUE}
        store_server = stack.enter_context(RedisServer())
        store = store_server.client()
        env["FANOUT_KILL_STORE_URL"] = store_server.url
        if backend == "celery":
            from tests.support.rabbitmq_server import RabbitMQServer

            broker_url = stack.enter_context(RabbitMQServer()).url
            worker_args = ["--pool", "threads", "--concurrency", "4"]
        else:
            broker_url = stack.enter_context(RedisServer(persistent=True)).url
            worker_args = ["--threads", "4", "--heartbeat-timeout", "3000"]
            worker_args += ["--maintenance-chance", "1000000"]
        env["JOBS_BROKER_URL"] = broker_url
        settings = JobsSettings(backend=backend, broker_url=broker_url, queue=QUEUE)
        dispatcher = create_dispatcher(settings=settings)
        for first in range(0, EVENTS, 250):
            receipts = dispatcher.send_many_sync(
                [(signed_up, {"n": n}) for n in range(first, first + 250)]
            )
            assert all(r.jobs == JOB_NAMES for r in receipts)
        getattr(dispatcher, "close", lambda: None)()

        def done() -> int:
            return int(store.hlen(DONE))

        killed: set[int] = set()
        app = ("tests.events.fanout_app:jobs", "tests.events.fanout_app:create_context")
        with jobs_core_workers(env, *app, worker_args) as start:
            worker = start()
            for share in (0.25, 0.6):
                wait_until(lambda s=share: done() >= RUNS * s, 120, what=f"{share:.0%} of the runs")
                kill_group(worker)
                killed.add(worker.pid)  # its process group's id
                worker = start()
            wait_until(lambda: done() == RUNS, 120, what=f"all {RUNS} runs (done: {done()})")
        completions = {k.decode(): int(v) for k, v in store.hgetall(DONE).items()}
        first = {k.decode(): int(v) for k, v in store.hgetall(STARTED).items()}
    assert len(completions) == RUNS  # none lost
    twice = {run for run, count in completions.items() if count > 1}
    on_killed = {run for run, group in first.items() if group in killed}
    assert twice <= on_killed, twice - on_killed
    report_figure(
        f"{backend}: {RUNS} runs, 2 kills, {len(twice)} completed twice, each first delivered "
        "to a killed worker"
    )
