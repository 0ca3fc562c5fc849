"""Celery's zero-loss configuration: RabbitMQ with quorum queues, as `JOBS_BROKER_URL=amqp://...`
gives it with no other setting (backends/celery/broker.py).

The tests run on the session's private RabbitMQ node (the `rabbitmq` fixture,
tests/support/rabbitmq_server.py; each test on a queue of its own), except the one that kills
the node, which starts a node of its own, and real worker processes (tests/celery/app.py,
prefork pool). The kill and restart runs of 1,000+ jobs are in tests/celery/test_durability.py.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobs_core import DispatchError, JobsSettings, create_dispatcher
from jobs_core.backends.celery import CeleryDispatcher, dead_letter_queue
from tests.celery.app import COMPLETIONS, DONE, STARTS, crash, work
from tests.celery.workers import wait_for, worker_processes
from tests.support.rabbitmq_server import RabbitMQServer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(240)

PREFORK = ("--pool", "prefork", "--concurrency", "2")


def _done(store: Any) -> set[int]:
    return {int(n) for n in store.smembers(DONE)}


def test_amqp_url_alone_gives_quorum_queues_confirms_and_dead_letters(
    tmp_path: Path, rabbitmq: RabbitMQServer
) -> None:
    """`create_dispatcher()` with `JOBS_BROKER_URL=amqp://...` and nothing else declares a
    quorum queue with a delivery limit and a dead-letter queue, and publishes with confirms."""
    node = rabbitmq
    settings = JobsSettings(backend="celery", broker_url=node.url, queue="plain")
    dispatcher = create_dispatcher(settings=settings)
    try:
        assert isinstance(dispatcher, CeleryDispatcher)
        assert dispatcher.app.conf.broker_transport_options["confirm_publish"] is True
        dispatcher.dispatch_sync(work, {"n": 1})
    finally:
        dispatcher.close()
    queues = node.ctl("list_queues", "-q", "--no-table-headers", "name", "type", "arguments")
    rows = {line.split()[0]: line for line in queues.splitlines() if line.strip()}
    assert "quorum" in rows["plain"] and "x-delivery-limit" in rows["plain"], queues
    assert "x-dead-letter-exchange" in rows["plain"], queues
    assert "quorum" in rows[dead_letter_queue("plain")], queues
    assert node.ready("plain") == 1


def test_a_message_that_kills_its_worker_every_time_ends_in_the_dead_letter_queue(
    tmp_path: Path, rabbitmq: RabbitMQServer
) -> None:
    """A job whose run kills its process: RabbitMQ counts each return and, past the delivery
    limit (3 here), moves the message to `<queue>.dead`, where an operator finds it (with
    RabbitMQ's `x-death` header saying why); the worker goes on with the next jobs."""
    queue, limit = "poison", 3
    node = rabbitmq
    with RedisServer() as store_server:
        store = store_server.client()
        dispatcher = CeleryDispatcher(node.url, queue, delivery_limit=limit)
        env = {"CELERY_TEST_DELIVERY_LIMIT": str(limit)}
        with worker_processes(node.url, store_server.url, queue, tmp_path, env) as workers:
            try:
                poison = dispatcher.dispatch_sync(crash, {"n": 1})
                dispatcher.dispatch_many_sync([(work, {"n": n}) for n in range(5)])
            finally:
                dispatcher.close()
            worker = workers.start_celery_cli_worker(*PREFORK)
            wait_for(lambda: _done(store) == set(range(5)), 60, "the other jobs")
            wait_for(lambda: node.ready(dead_letter_queue(queue)) == 1, 60, "a dead letter")
            assert worker.poll() is None, "the worker goes on"
            runs = int(store.hget(COMPLETIONS, "crash-1") or 0)
            assert runs == limit + 1, f"delivered {runs} times: once, then {limit} returns"
        from kombu import Connection

        with Connection(node.url) as connection:
            letter = connection.default_channel.basic_get(dead_letter_queue(queue), no_ack=True)
        assert letter is not None
        assert letter.headers["id"] == poison.dispatch_id
        assert letter.headers["task"] == "celery_test.crash"
        assert letter.headers["x-death"][0]["reason"] == "delivery_limit"


def test_every_receipt_runs_after_a_hard_kill_of_the_broker(
    tmp_path: Path, report_figure: Any
) -> None:
    """The node SIGKILLed while a producer dispatches at full speed, then started again on the
    same data: every dispatch that returned a receipt runs (a receipt is a publisher confirm:
    the message was in the quorum queue's log); every other one raised `DispatchError` within
    the dispatch timeout (C7); none hung."""
    queue = "hard-kill"
    with RabbitMQServer() as node, RedisServer() as store_server:
        store = store_server.client()
        dispatcher = CeleryDispatcher(node.url, queue, timeout=2.0)
        receipts: list[int] = []
        refused: list[tuple[int, float]] = []
        stop = threading.Event()

        def produce() -> None:
            n = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    dispatcher.dispatch_sync(work, {"n": n})
                    receipts.append(n)
                except DispatchError:
                    refused.append((n, time.monotonic() - started))
                n += 1

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        try:
            wait_for(lambda: len(receipts) >= 500, 60, "500 receipts")
            node.kill()
            wait_for(lambda: len(refused) >= 5, 30, "dispatches refused while the node is dead")
        finally:
            stop.set()
            producer.join(30)
            dispatcher.close()
        assert not producer.is_alive(), "no dispatch hung"
        slowest = max(seconds for _, seconds in refused)
        assert slowest < 2.0 + 1.0, f"a refusal took {slowest:.1f}s"
        node.start()
        with worker_processes(node.url, store_server.url, queue, tmp_path) as workers:
            workers.start_celery_cli_worker(*PREFORK)
            wait_for(
                lambda: set(receipts) <= _done(store),
                120,
                "every receipt's job",
                lambda: f"missing {sorted(set(receipts) - _done(store))[:10]}",
            )
        ran_anyway = len({n for n, _ in refused} & _done(store))
        report_figure(
            f"hard kill: receipts={len(receipts)} all ran; refused={len(refused)} "
            f"(slowest refusal {slowest:.2f}s) "
            f"(of which {ran_anyway} ran anyway: published, confirm lost with the node)"
        )


def test_a_delay_waits_in_the_broker_not_in_a_worker(
    tmp_path: Path, rabbitmq: RabbitMQServer
) -> None:
    """A delayed job (native delayed delivery) is not held by a worker while it waits, runs no
    earlier than asked (C8), and a delay longer than RabbitMQ's consumer timeout (30 min, the
    limit when a worker held it) is accepted."""
    queue = "delays"
    node = rabbitmq
    with RedisServer() as store_server:
        store = store_server.client()
        dispatcher = CeleryDispatcher(node.url, queue)
        with worker_processes(node.url, store_server.url, queue, tmp_path) as workers:
            workers.start_celery_cli_worker(*PREFORK)
            try:
                sent = time.time()
                dispatcher.dispatch_sync(work, {"n": 1}, delay=timedelta(seconds=3))
                dispatcher.dispatch_sync(work, {"n": 2}, delay=timedelta(hours=2))
            finally:
                dispatcher.close()
            wait_for(lambda: node.queue_counts(queue) == (0, 0), 30, "the worker to hold none")
            wait_for(lambda: 1 in _done(store), 60, "the 3 s job")
            starts = [e.decode().split(":") for e in store.lrange(STARTS, 0, -1)]
            (started,) = [float(at) for n, _, at in starts if n == "1"]
            assert started >= sent + 3.0
            assert 2 not in _done(store)
