"""The kombu Redis transport patches (backends/_celery_patches.py), one test each, at kombu level.

Every test runs twice: on kombu's own transport (`stock`), where it shows the upstream
behaviour the patch works around, and on the patched one. If kombu ever fixes a behaviour, the
`stock` case fails and says the patch may go.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Producer
from kombu.common import ignore_errors
from redis import Redis

from jobs_core.backends._celery_patches import REDIS_TRANSPORT, _Keeper, held_count
from tests.celery.workers import ROOT, wait_for
from tests.support.redis_server import free_port

pytestmark = pytest.mark.timeout(60)

TRANSPORTS = {"stock": None, "patched": REDIS_TRANSPORT}
QUEUE = "patch-test"


def connection(url: str, transport: str | None, **options: Any) -> Connection:
    kwargs = {"transport": transport} if transport else {}
    return Connection(url, transport_options=options, **kwargs)


def publish(url: str, *bodies: str) -> None:
    with Connection(url) as conn:
        producer = Producer(conn.default_channel)
        for body in bodies:
            producer.publish(body, routing_key=QUEUE, serializer="json")


def consume(conn: Connection, queue: str = QUEUE, channel: Any = None) -> tuple[Any, list[Any]]:
    """Start consuming `queue` (no auto-ack); the messages received are appended to the list."""
    received: list[Any] = []
    channel = channel or conn.channel()
    channel.basic_consume(queue, no_ack=False, callback=received.append, consumer_tag=queue)
    return channel, received


def drain(conn: Connection, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.2)
        except TimeoutError:
            pass


DYING_CONSUMER = """
import sys, time
from kombu import Connection
url, transport = sys.argv[1], sys.argv[2]
kwargs = {"transport": transport} if transport != "stock" else {}
conn = Connection(url, transport_options={"heartbeat_timeout": 1}, **kwargs)
channel = conn.channel()
channel.basic_consume("patch-test", no_ack=False, callback=print, consumer_tag="t")
conn.transport.cycle.on_poll_start()  # asks Redis for a message; its answer is never read
print("asked", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_a_message_served_to_a_consumer_that_dies_is_not_lost(
    transport: str, redis_server: Any
) -> None:
    """Patch 1 (atomic fetch) and 2 (a dead consumer's messages come back within the bound).

    A consumer asks Redis for a message and is SIGKILLed before it reads the answer: the
    moment between kombu's BRPOP and its HSET, made certain.
    """
    url, client = redis_server.url, redis_server.client()
    publish(url, "precious")
    child = subprocess.Popen(
        [sys.executable, "-c", DYING_CONSUMER, url, TRANSPORTS[transport] or "stock"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"asked"
        wait_for(lambda: client.llen(QUEUE) == 0, 10, "Redis to hand the message out")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    killed_at = time.monotonic()

    if transport == "stock":
        # Upstream: the message left the list and was never recorded as unacked: it is gone.
        time.sleep(1.5)
        assert client.llen(QUEUE) == 0 and client.hlen("unacked") == 0
        return

    assert held_count(client) == 1, "held by the dead consumer, not lost"
    with connection(url, TRANSPORTS[transport], heartbeat_timeout=1) as conn:
        _, received = consume(conn)
        while not received and time.monotonic() - killed_at < 10:
            drain(conn, 0.2)
        waited = time.monotonic() - killed_at
        assert [m.payload for m in received] == ["precious"]
        # The bound: heartbeat_timeout (1 s) + a heartbeat interval (0.1 s), with room for load.
        assert waited < 6, f"came back after {waited:.1f}s"
        received[0].ack()
    assert held_count(client) == 0 and client.llen(QUEUE) == 0


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_a_live_consumer_keeps_a_message_past_the_visibility_timeout(
    transport: str, redis_server: Any
) -> None:
    """Patch 2: a message held on purpose (an ETA waiting in a worker, a long job) by a consumer
    that is alive is not handed to another one because it is older than `visibility_timeout`."""
    url = redis_server.url
    options = {
        "visibility_timeout": 1,
        "unacked_restore_throttle": 1,
        "heartbeat_timeout": 1,
    }
    publish(url, "eta-job")
    with (
        connection(url, TRANSPORTS[transport], **options) as holder,
        connection(url, TRANSPORTS[transport], **options) as other,
    ):
        _, held = consume(holder)
        while not held:
            drain(holder, 0.2)
        _, stolen = consume(other)
        drain(other, 3.0)  # three visibility timeouts; the other consumer sweeps meanwhile
        if transport == "stock":
            assert stolen and {m.payload for m in stolen} == {"eta-job"}, "upstream: again"
            return
        assert stolen == [], "delivered again while its consumer was alive"
        held[0].ack()
    assert held_count(redis_server.client()) == 0


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_closing_a_collected_connection_with_redis_gone_is_a_connection_error(
    transport: str, redis_server: Any
) -> None:
    """Patch 3: Celery's reconnect (`collect()`, then `close()`) with Redis gone.

    Both channels have a request in flight when Redis dies, as a worker's task and event
    channels do; the default channel also holds an unacked message. The first close of each
    channel is cut short by the dead socket, `collect()` clears the transport's client, and the
    second close restores the unacked message through `_connparams()`.
    """
    url, client = redis_server.url, redis_server.client()
    publish(url, "in-flight")
    conn = connection(url, TRANSPORTS[transport])
    _, received = consume(conn, channel=conn.default_channel)
    while not received:
        drain(conn, 0.2)
    consume(conn, queue="other")  # a second consuming channel, opened after the default one
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        for channel in conn.transport.channels:
            channel._next_claim_at = 0  # the patched channels ask at once too
        conn.transport.cycle.on_poll_start()  # both channels send their request
    finally:
        redis_server.kill()  # SIGKILL: the sockets are closed, the requests never answered

    conn.collect(socket_timeout=1)  # what Celery's on_connection_error_after_connected does
    if transport == "stock":
        with pytest.raises(AttributeError, match="hostname"):
            ignore_errors(conn, conn.close)
        return
    ignore_errors(conn, conn.close)  # a connection error at most, which Celery ignores here
    del client


@pytest.fixture
def patched_connection(redis_server: Any) -> Iterator[Connection]:
    with connection(redis_server.url, REDIS_TRANSPORT, heartbeat_timeout=1) as conn:
        yield conn


def test_a_requeued_message_goes_to_the_back_and_is_held_again(
    redis_server: Any, patched_connection: Connection
) -> None:
    """`reject(requeue=True)` (Celery's `task_reject_on_worker_lost`) moves the message from the
    held hash back to its queue in one script."""
    publish(redis_server.url, "first", "second")
    _, received = consume(patched_connection)
    while not received:
        drain(patched_connection, 0.2)
    assert received[0].payload == "first"
    received[0].reject(requeue=True)
    while len(received) < 3:
        drain(patched_connection, 0.2)
    assert [m.payload for m in received] == ["first", "second", "first"]
    for message in received[1:]:
        message.ack()
    assert held_count(redis_server.client()) == 0


def test_a_closed_consumer_gives_back_what_it_held(redis_server: Any) -> None:
    """On a clean close (a warm shutdown), prefetched and ETA messages go back at once."""
    url, client = redis_server.url, redis_server.client()
    publish(url, "kept")
    with connection(url, REDIS_TRANSPORT) as conn:
        _, received = consume(conn)
        while not received:
            drain(conn, 0.2)
        assert held_count(client) == 1
    assert held_count(client) == 0 and client.llen(QUEUE) == 1
    assert client.zcard("unacked:consumers") == 0


def test_no_sweep_until_live_consumers_could_beat_again(tmp_path: Any) -> None:
    """Patch 2, after an outage: no consumer can beat while Redis is away, so every heartbeat
    is old when it comes back. A keeper that reaches Redis first (here, before the holder's
    keeper, held back by its lock) must not give away what live consumers hold: not while
    Redis has been up for less than a heartbeat timeout, nor while that keeper itself has just
    failed to reach Redis (a partition on its side)."""
    from tests.support.redis_server import RedisServer

    with RedisServer(persistent=True) as server:
        publish(server.url, "held")
        with connection(server.url, REDIS_TRANSPORT, heartbeat_timeout=1) as holder:
            channel, held = consume(holder)
            while not held:
                drain(holder, 0.2)
            client = server.client()
            holders_keeper = holder.transport._keeper
            with holders_keeper._lock:  # the holder's keeper cannot beat for now
                server.stop()
                time.sleep(2.5)
                server.start()
                _Keeper(channel).beat(client)  # another worker's keeper, first back
                assert client.hlen(channel.held_key) == 1, "swept right after the restart"

                time.sleep(1.5)  # Redis up for longer than the timeout; still no beat
                partitioned = _Keeper(channel)
                partitioned.beat(Redis(port=free_port(), socket_connect_timeout=0.5))
                partitioned.beat(client)
                assert client.hlen(channel.held_key) == 1, "swept by a keeper just cut off"

                _Keeper(channel).beat(client)  # a keeper with no excuse: the holder is late
                assert client.hlen(channel.held_key) == 0 and client.llen(QUEUE) == 1
            held[0].ack()


def test_workers_keep_kombus_transport_on_an_untested_kombu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The transport patch relies on kombu 5.7's internals: on another kombu the worker keeps
    kombu's own transport (it works, without the guarantees) and logs a warning."""
    import kombu
    from celery import Celery

    from jobs_core.backends._celery_patches import CONSUMER, install_worker_patches

    def app() -> Any:
        made = Celery("patch-test", set_as_current=False)
        made.conf.broker_url = "redis://127.0.0.1:1/0"
        install_worker_patches(made)
        return made

    assert app().conf.broker_transport == REDIS_TRANSPORT
    monkeypatch.setattr(kombu, "__version__", "5.8.0")
    # A handler of its own, on a logger set to WARNING: an in-process Celery worker started
    # earlier in the session sets the root logger's level (ERROR in some tests).
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    patches_logger = logging.getLogger("jobs_core.celery")
    level = patches_logger.level
    patches_logger.setLevel(logging.WARNING)
    patches_logger.addHandler(handler)
    try:
        untested = app()
    finally:
        patches_logger.removeHandler(handler)
        patches_logger.setLevel(level)
    assert not untested.conf.broker_transport
    assert untested.conf.worker_consumer == CONSUMER
    assert any("kombu 5.8 is not the version" in w for w in warnings), warnings
