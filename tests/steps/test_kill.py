"""C35 across SIGKILLs: 200 five-step jobs on a real worker (Celery on RabbitMQ with its steps
in Redis, Dramatiq on Redis), whose process group is SIGKILLed twice while they run, the second
time while job 0 is inside its step 3; a new worker is started at once each time.

Job 0: steps 1-2 ran once, step 3 twice (its first run was killed), steps 4-5 once, and it
completed. Every job completed (none lost), and no step ran again once its value was kept: for
each step, the value the step store kept is the token of the step's last run.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from jobs_core import JobsSettings, create_dispatcher
from jobs_core.steps.redis_store import KEY_PREFIX
from tests.conformance.harness import wait_until
from tests.support.jobs_core_workers import jobs_core_workers, kill_group
from tests.support.redis_server import RedisServer

from .kill_app import DONE, RUNS, five

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
JOBS = 200
QUEUE = "steps-kill"


@pytest.mark.parametrize("backend", ["celery", "dramatiq"])
def test_a_worker_killed_inside_a_step_runs_no_kept_step_again(
    backend: str, report_figure: Any
) -> None:
    with ExitStack() as stack:
        store_server = stack.enter_context(RedisServer())
        store = store_server.client()
        env = {
            "JOBS_BACKEND": backend,
            "JOBS_QUEUE": QUEUE,
            "STEPS_KILL_STORE_URL": store_server.url,
            "PYTHONPATH": str(ROOT),
        }
        if backend == "celery":
            from tests.support.rabbitmq_server import RabbitMQServer

            broker_url = stack.enter_context(RabbitMQServer()).url
            steps = stack.enter_context(RedisServer())
            env["JOBS_STEP_STORE_URL"] = steps.url  # RabbitMQ keeps no steps: Redis does
            steps_client = steps.client()
            worker_args = ["--pool", "threads", "--concurrency", "4"]
        else:
            broker_server = stack.enter_context(RedisServer(persistent=True))
            broker_url = broker_server.url
            steps_client = broker_server.client()  # the broker's Redis keeps the steps
            worker_args = ["--threads", "4", "--heartbeat-timeout", "3000"]
            worker_args += ["--maintenance-chance", "1000000"]
        env["JOBS_BROKER_URL"] = broker_url
        dispatcher = create_dispatcher(
            settings=JobsSettings(backend=backend, broker_url=broker_url, queue=QUEUE)
        )
        receipts = dispatcher.dispatch_many_sync([(five, {"n": n}) for n in range(JOBS)])
        close = getattr(dispatcher, "close", None)
        if close is not None:
            close()
        done = lambda: store.hlen(DONE)  # noqa: E731

        registry, context = "tests.steps.kill_app:jobs", "tests.steps.kill_app:create_context"
        with jobs_core_workers(env, registry, context, worker_args) as start:
            worker = start()
            wait_until(lambda: done() >= JOBS // 4, 90, what="a quarter of the jobs")
            kill_group(worker)  # first kill: wherever the jobs are
            worker = start()
            wait_until(
                lambda: store.llen(RUNS.format(n=0, i=3)) >= 1 and done() >= JOBS * 0.6,
                90,
                what="job 0 inside step 3, and 60% of the jobs",
            )
            kill_group(worker)  # second kill: job 0 is inside its step 3
            start()
            wait_until(lambda: done() == JOBS, 120, what=f"all {JOBS} jobs (done: {done()})")

        runs = {
            (n, i): [t.decode() for t in store.lrange(RUNS.format(n=n, i=i), 0, -1)]
            for n in range(JOBS)
            for i in range(1, 6)
        }
        assert [len(runs[0, i]) for i in range(1, 6)] == [1, 1, 2, 1, 1]
        for receipt, n in zip(receipts, range(JOBS), strict=True):
            kept = steps_client.hgetall(f"{KEY_PREFIX}{receipt.dispatch_id}")
            for i in range(1, 6):
                value = kept[f"s:step{i}".encode()].decode().strip('"')
                assert value == runs[n, i][-1], (n, i, value, runs[n, i])
        again = sum(len(r) - 1 for r in runs.values())
        report_figure(f"{backend}: {JOBS} jobs, 2 kills, step runs beyond the first: {again}")
