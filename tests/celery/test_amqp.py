"""Celery on RabbitMQ, on a private node the tests start (tests/support/rabbitmq_server.py)."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
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


def test_delays_are_bounded_by_rabbitmqs_consumer_timeout(rabbitmq: Any) -> None:
    """RabbitMQ closes a channel that holds a delivery unacked for its `consumer_timeout` (30 min
    by default) and the Celery worker stops (celery/celery#6760); Celery holds a delayed job
    unacked until its time. So on AMQP a delay is bounded by that timeout, not by the 2 h
    visibility timeout of Redis, and is refused at dispatch beyond it (patch 6)."""
    from jobs_core import JobPayloadError
    from jobs_core.backends._celery_patches import AMQP_CONSUMER_TIMEOUT
    from jobs_core.errors import DispatchError

    jobs = JobRegistry[Any]()

    @jobs.job(f"amqp.later.{uuid.uuid4().hex[:8]}")
    def later(payload: Greeting, ctx: Any) -> None: ...

    dispatcher = CeleryDispatcher(rabbitmq.url, f"amqp-delay-{uuid.uuid4().hex[:8]}")
    try:
        assert dispatcher.max_delay == timedelta(seconds=AMQP_CONSUMER_TIMEOUT * 0.9)
        with pytest.raises((ValueError, JobPayloadError, DispatchError), match="longer than"):
            dispatcher.dispatch_sync(later, {"text": "x"}, delay=timedelta(minutes=28))
        dispatcher.dispatch_sync(later, {"text": "x"}, delay=timedelta(minutes=26))
    finally:
        dispatcher.close()
    redis_dispatcher = CeleryDispatcher("redis://127.0.0.1:1/0", "q")
    try:
        assert redis_dispatcher.max_delay is not None
        assert redis_dispatcher.max_delay.total_seconds() > AMQP_CONSUMER_TIMEOUT, (
            "Redis: unchanged"
        )
    finally:
        redis_dispatcher.close()
