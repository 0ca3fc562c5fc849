"""Smoke test of the Dramatiq backend on RabbitMQ (`amqp://`), on the session's private node
(tests/support/rabbitmq_server.py, the `rabbitmq` fixture): a real broker, started by the tests,
never one the machine happens to run.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from jobs_core import JobRegistry
from jobs_core.testing import RecordingInstrumentation

pytestmark = pytest.mark.timeout(90)


class Ping(BaseModel):
    n: int


def test_amqp_dispatch_and_run(rabbitmq: Any) -> None:
    import dramatiq

    from jobs_core.backends.dramatiq import (
        DramatiqDispatcher,
        close_broker,
        make_worker_broker,
        register_actors,
    )

    jobs = JobRegistry[Any]()
    seen: list[int] = []
    done = threading.Event()

    @jobs.job(f"amqp.ping.{uuid.uuid4().hex[:6]}")
    def ping(payload: Ping, ctx: Any) -> None:
        seen.append(payload.n)
        if len(seen) == 3:
            done.set()

    url = rabbitmq.url.removesuffix("//") + "/%2F"  # the default vhost, as pika spells it
    queue = f"jobs_amqp_{uuid.uuid4().hex[:8]}"
    events = RecordingInstrumentation()
    broker = make_worker_broker(url)
    register_actors(jobs, broker=broker, queue=queue, instrumentation=events)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    dispatcher = DramatiqDispatcher(url, queue, instrumentation=events)
    try:
        dispatcher.dispatch_sync(ping, {"n": 1})
        dispatcher.dispatch_many_sync([(ping, {"n": 2}), (ping, {"n": 3})])
        assert done.wait(30), f"ran {seen}"
    finally:
        worker.stop(timeout=5000)
        dispatcher.close()
        try:  # leave no test queues behind on the session's node
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                broker.channel.queue_delete(name)  # type: ignore[attr-defined]
        finally:
            close_broker(broker)
    assert sorted(seen) == [1, 2, 3]
    assert events.kinds(ping.name).count("completed") == 3
