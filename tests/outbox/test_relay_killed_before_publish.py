"""C32 where the idempotency keys are not beside the queue: Celery on RabbitMQ, keys in Redis.

A relay that claimed the keys of its rows and died before it published them leaves pending
claims: the next relay waits for them to lapse (twice the dispatch timeout, and a second), then
claims and sends, and every job runs once. Before claims were pending, such a relay left the
keys held for 24 h: the next relay's sends came back "deduplicated", the rows were marked sent,
and the jobs never ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from jobs_core.dispatch.idempotency import PENDING
from tests.dramatiq.workers import WorkerProcesses, wait_for
from tests.outbox.test_end_to_end import (
    assert_ran_once_and_no_more,
    relay_proc,
    statuses,
    wait_all_ran,
    worker_command,
    write,
)

pytestmark = pytest.mark.timeout(240)

QUEUE = "outbox-amqp"
WORKER = worker_command("--pool", "threads", "--concurrency", "4")
"""The Celery worker of this test (JOBS_BACKEND=celery, `CeleryOnRabbitMQ`)."""


class CeleryOnRabbitMQ(WorkerProcesses):
    """The outbox tests' processes, on Celery and RabbitMQ, with idempotency keys in Redis."""

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "JOBS_BACKEND": "celery",
            "JOBS_IDEMPOTENCY_URL": self.store_url,
            "JOBS_DISPATCH_TIMEOUT": "1",  # a dead relay's claims lapse after 3 s
        }


@pytest.fixture
def procs(rabbitmq: Any, store: Any) -> Iterator[WorkerProcesses]:
    workers = CeleryOnRabbitMQ(rabbitmq.url, store.url, QUEUE)
    try:
        yield workers
    finally:
        workers.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_C32_a_relay_killed_between_claim_and_publish_loses_no_job(
    database_url: str, engine: Engine, procs: WorkerProcesses, store: Any, rabbitmq: Any
) -> None:
    write(engine, range(40))
    dying = relay_proc(procs, database_url, "--kill-before-publish", "--batch-size", "20")
    assert dying.wait(60) == -9, procs.output(dying)
    assert "dying before publishing" in procs.output(dying)
    client = store.client()
    claims = [client.get(key) for key in client.scan_iter("jobs_core:idem:*")]
    assert len(claims) == 20 and all(c.decode().startswith(PENDING) for c in claims), (
        "the dead relay left pending claims, not keys held for 24 h"
    )
    assert statuses(engine)["pending"] == 40

    procs.start(WORKER)
    relay_proc(procs, database_url, "--batch-size", "20")
    wait_all_ran(procs, store, range(40), timeout=120)
    assert_ran_once_and_no_more(
        procs,
        store,
        engine,
        range(40),
        drain=lambda: wait_for(
            lambda: rabbitmq.queue_counts(QUEUE) == (0, 0),
            60,
            "the queue is drained, every message acked",
        ),
    )
