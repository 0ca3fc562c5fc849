"""Celery on RabbitMQ, on a private node the tests start (tests/support/rabbitmq_server.py)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from celery import signals
from celery.contrib.testing.worker import start_worker
from pydantic import BaseModel

from jobs_core import JobRegistry
from jobs_core.backends.celery import CeleryDispatcher, create_celery_app
from jobs_core.testing import RecordingInstrumentation
from tests.celery.workers import wait_for


class Greeting(BaseModel):
    text: str


@pytest.mark.timeout(90)
def test_one_job_through_rabbitmq(rabbitmq: Any) -> None:
    url = rabbitmq.url
    jobs = JobRegistry[Any]()
    seen: list[str] = []
    lock = threading.Lock()

    @jobs.job(f"amqp.greet.{uuid.uuid4().hex[:8]}")
    async def greet(payload: Greeting, ctx: Any) -> None:
        with lock:
            seen.append(payload.text)

    queue = f"amqp-smoke-{uuid.uuid4().hex[:8]}"
    events = RecordingInstrumentation()
    app = create_celery_app(
        jobs,
        broker_url=url,
        queue=queue,
        instrumentation=events,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        broker_heartbeat=2,  # wakes the in-process worker's loop: it stops within 1 s, not 10
    )
    dispatcher = CeleryDispatcher(url, queue, instrumentation=events)
    assert "guest@" not in repr(dispatcher), "no password in the repr (C23)"
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
            dispatcher.dispatch_sync(greet, {"text": "hello"})
            dispatcher.dispatch_many_sync([(greet, {"text": "a"}), (greet, {"text": "b"})])
            wait_for(lambda: len(seen) == 3, 30, "three jobs through RabbitMQ")
    finally:
        signals.task_unknown.disconnect(app.jobs_core_unknown_receiver)
        dispatcher.close()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        app.close()
    assert sorted(seen) == ["a", "b", "hello"]
    assert events.kinds(greet.name).count("completed") == 3
