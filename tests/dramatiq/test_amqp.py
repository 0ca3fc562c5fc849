"""Smoke test of the Dramatiq backend on RabbitMQ (`amqp://`), where one answers locally.

Needs `pika` (Dramatiq's RabbitMQ client) and a RabbitMQ on 127.0.0.1:5672 with guest/guest;
skips with the reason otherwise.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from jobs_core import JobRegistry
from jobs_core.testing import RecordingInstrumentation

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("pika") is None,
        reason="pika is not installed: Dramatiq's RabbitmqBroker needs it (pip install pika)",
    ),
    pytest.mark.skipif(not _rabbitmq_answers(), reason="no RabbitMQ answers on 127.0.0.1:5672"),
    pytest.mark.timeout(60),
]


class Ping(BaseModel):
    n: int


def test_amqp_dispatch_and_run() -> None:
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

    queue = f"jobs_amqp_{uuid.uuid4().hex[:8]}"
    events = RecordingInstrumentation()
    broker = make_worker_broker(AMQP_URL)
    register_actors(jobs, broker=broker, queue=queue, instrumentation=events)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    dispatcher = DramatiqDispatcher(AMQP_URL, queue, instrumentation=events)
    try:
        dispatcher.dispatch_sync(ping, {"n": 1})
        dispatcher.dispatch_many_sync([(ping, {"n": 2}), (ping, {"n": 3})])
        assert done.wait(30), f"ran {seen}"
    finally:
        worker.stop(timeout=5000)
        dispatcher.close()
        try:  # leave no test queues behind on the shared RabbitMQ
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                broker.channel.queue_delete(name)  # type: ignore[attr-defined]
        finally:
            close_broker(broker)
    assert sorted(seen) == [1, 2, 3]
    assert events.kinds(ping.name).count("completed") == 3
