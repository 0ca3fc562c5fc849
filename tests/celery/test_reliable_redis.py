"""The opt-in reliable Redis transport (backends/celery/reliable_redis.py), one test each, at kombu level.

Every test runs twice: on kombu's own transport (`stock`), where it shows the upstream
behaviour the patch works around, and on the patched one. If kombu ever fixes a behaviour, the
`stock` case fails and says the patch may go.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Producer
from redis import Redis

from jobs_core.backends.celery.reliable_redis import REDIS_TRANSPORT, _Keeper, held_count
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


def test_the_reliable_transport_is_refused_on_an_untested_kombu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The transport relies on kombu 5.7's internals: a worker asked for it on another kombu is
    refused when it is built, naming the extra that pins kombu (never a silent fallback)."""
    import kombu

    from jobs_core import JobConfigError, JobRegistry
    from jobs_core.backends.celery import create_celery_app

    url = "redis://127.0.0.1:1/0"
    app = create_celery_app(JobRegistry(), broker_url=url, transport="reliable-redis")
    assert app.conf.broker_transport == REDIS_TRANSPORT
    monkeypatch.setattr(kombu, "__version__", "5.8.0")
    with pytest.raises(
        JobConfigError, match=r"kombu 5\.7\.x and this is kombu 5\.8.*celery-reliable-redis"
    ):
        create_celery_app(JobRegistry(), broker_url=url, transport="reliable-redis")
    with pytest.raises(JobConfigError, match="needs a redis"):
        create_celery_app(
            JobRegistry(), broker_url="amqp://127.0.0.1:1//", transport="reliable-redis"
        )


# -- an idle consumer of one queue blocks in BLMOVE (Redis 6.2) instead of polling --------------


def blocked_in_blmove(client: Redis) -> bool:
    """Whether some client of the server is blocked in a BLMOVE right now."""
    return any(c["cmd"] == "blmove" and "b" in c["flags"] for c in client.client_list())


def calls(client: Redis, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def drain_until(conn: Connection, predicate: Any, seconds: float, what: str) -> None:
    """Drain `conn` until `predicate()` holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        drain(conn, 0.1)


def consume_blocked(conn: Connection, client: Redis) -> tuple[Any, list[Any]]:
    """`consume` `QUEUE` on `conn` (the reliable transport), then drain until the consumer is
    blocked in its BLMOVE: where every test of an idle consumer starts."""
    channel, received = consume(conn)
    drain_until(conn, lambda: blocked_in_blmove(client), 10, "the consumer to block")
    return channel, received


def lose_blmove_reply(channel: Any, url: str, client: Redis, body: str) -> None:
    """Publish `body` to the blocked consumer of `channel`, wait until its BLMOVE has moved it
    into the landing list, then drop the poll connection before the reply is read: the
    message lies in the landing list of a consumer that is still alive."""
    publish(url, body)
    wait_for(lambda: client.llen(QUEUE) == 0, 10, "BLMOVE to take the message")
    channel.client.connection.disconnect()


def test_an_idle_consumer_of_one_queue_blocks_in_blmove_and_does_not_poll(
    redis_server: Any,
) -> None:
    """An idle consumer of one queue waits in Redis (`BLMOVE` into its landing list) instead of
    sending a claim every `idle_poll_interval`; a message sent to it is delivered from there."""
    url, client = redis_server.url, redis_server.client()
    # A keeper beating rarely (its heartbeats are EVALs too); blocks of the default 1 s.
    with connection(url, REDIS_TRANSPORT, heartbeat_interval=60) as conn:
        channel, received = consume_blocked(conn, client)
        client.config_resetstat()
        drain(conn, 1.0)  # idle for a second: the poll would have sent about 10 claims
        assert calls(client, "eval") <= 3, "an idle consumer of one queue polled"
        assert calls(client, "blmove") >= 1

        publish(url, "woken")
        drain_until(conn, lambda: received, 10, "the message")
        assert [m.payload for m in received] == ["woken"]
        assert client.hlen(f"unacked:held:{channel.consumer_id}") == 1, "in its held hash"
        assert held_count(client) == 1 and client.llen(QUEUE) == 0
        received[0].ack()
        assert held_count(client) == 0


LANDING_CONSUMER = """
import sys, time
from kombu import Connection
url, transport = sys.argv[1], sys.argv[2]
conn = Connection(url, transport=transport,
                  transport_options={"heartbeat_timeout": 1, "idle_block_timeout": 30})
channel = conn.channel()
channel.basic_consume("patch-test", no_ack=False, callback=print, consumer_tag="t")
deadline = time.monotonic() + 10
while not (channel._in_poll and channel._in_flight == "BLMOVE"):  # claim, then block
    assert time.monotonic() < deadline, "never blocked"
    try:
        conn.drain_events(timeout=0.1)
    except TimeoutError:
        pass
print("blocking", flush=True)  # the BLMOVE's reply (the item it moved) is never read
time.sleep(60)
"""


def test_an_item_landed_for_a_consumer_that_dies_is_not_lost(redis_server: Any) -> None:
    """Patches 1 and 2 with BLMOVE: a consumer is SIGKILLed after its BLMOVE moved a message
    into its landing list and before a claim moved it on into its held hash. The message is
    held by that consumer meanwhile, and the sweep gives it back within the bound."""
    url, client = redis_server.url, redis_server.client()
    child = subprocess.Popen(
        [sys.executable, "-c", LANDING_CONSUMER, url, REDIS_TRANSPORT],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"blocking"
        wait_for(lambda: blocked_in_blmove(client), 10, "the consumer to block")
        publish(url, "precious")
        wait_for(lambda: client.llen(QUEUE) == 0, 10, "BLMOVE to take the message")
        assert [key for key in client.scan_iter("unacked:landing:*")], "in its landing list"
        assert held_count(client) == 1 and client.hlen("unacked:landing-sources") == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    killed_at = time.monotonic()

    assert held_count(client) == 1, "held by the dead consumer, not lost"
    with connection(url, REDIS_TRANSPORT, heartbeat_timeout=1) as conn:
        _, received = consume(conn)
        while not received and time.monotonic() - killed_at < 10:
            drain(conn, 0.2)
        waited = time.monotonic() - killed_at
        assert [m.payload for m in received] == ["precious"]
        assert waited < 6, f"came back after {waited:.1f}s"  # as the BRPOP case above
        received[0].ack()
    assert held_count(client) == 0 and client.llen(QUEUE) == 0
    assert client.hlen("unacked:landing-sources") == 0, "the dead consumer's record swept"


def test_closing_a_channel_with_a_blmove_in_flight_gives_back_what_landed(
    redis_server: Any,
) -> None:
    """A channel closed while its BLMOVE is in flight: the item that BLMOVE moved (its reply
    not read yet) goes back to the front of its queue, not to the closing consumer."""
    url, client = redis_server.url, redis_server.client()
    with connection(url, REDIS_TRANSPORT, idle_block_timeout=30) as conn:
        channel, received = consume_blocked(conn, client)
        publish(url, "landed", "next")
        wait_for(lambda: client.llen(QUEUE) == 1, 10, "BLMOVE to take the first message")
        assert held_count(client) == 1
        channel.close()
        assert received == [], "delivered to a channel that was closing"
    assert held_count(client) == 0 and client.hlen("unacked:landing-sources") == 0
    assert client.zcard("unacked:consumers") == 0
    assert queued(client) == ["landed", "next"], "back in front of the message behind it"


def test_what_landed_before_a_lost_connection_is_delivered_by_the_next_claim(
    redis_server: Any,
) -> None:
    """The poll connection drops with a BLMOVE's reply unread (the item is in the landing list,
    the consumer alive): its next claim takes the landing list first and delivers it."""
    url, client = redis_server.url, redis_server.client()
    with connection(url, REDIS_TRANSPORT, idle_block_timeout=30) as conn:
        channel, received = consume_blocked(conn, client)
        lose_blmove_reply(channel, url, client, "landed")
        assert held_count(client) == 1
        channel.idle_block_timeout = 0.5  # the close below waits for the next block to end
        drain_until(conn, lambda: received, 10, "the landed message")
        assert [m.payload for m in received] == ["landed"]
        assert client.hlen(f"unacked:held:{channel.consumer_id}") == 1, "moved to its hash"
        received[0].ack()
    assert held_count(client) == 0 and client.llen(QUEUE) == 0


def test_a_channel_closed_with_a_blmove_reply_unread_leaves_its_landing_list_to_the_sweep(
    redis_server: Any,
) -> None:
    """The poll connection drops with a BLMOVE in flight, then the channel closes: Redis may
    still serve that BLMOVE (it has not seen the connection go yet). The release keeps the
    consumer and its landing list, and the sweep gives back what landed there."""
    url, client = redis_server.url, redis_server.client()
    with connection(url, REDIS_TRANSPORT, idle_block_timeout=30) as conn:
        channel, received = consume_blocked(conn, client)
        lose_blmove_reply(channel, url, client, "late")
        channel.close()
        assert received == []
        assert held_count(client) == 1, "still in the landing list of a known consumer"
        assert client.zscore("unacked:consumers", channel.consumer_id) is not None
    with connection(url, REDIS_TRANSPORT, heartbeat_timeout=1) as sweeper:
        _, received = consume(sweeper)
        drain_until(sweeper, lambda: received, 10, "the sweep to give it back")
        assert [m.payload for m in received] == ["late"]
        received[0].ack()
    assert held_count(client) == 0 and client.hlen("unacked:landing-sources") == 0


def test_blocking_with_a_global_key_prefix(redis_server: Any) -> None:
    """With `global_keyprefix`, the consumer blocks on the prefixed queue list and its landing
    list and record are prefixed as its other keys are."""
    url, client = redis_server.url, redis_server.client()
    options = {"global_keyprefix": "pfx:", "heartbeat_interval": 60}
    with connection(url, REDIS_TRANSPORT, **options) as conn:
        _, received = consume_blocked(conn, client)
        assert client.hkeys("pfx:unacked:landing-sources") != []
        with Connection(url, transport_options={"global_keyprefix": "pfx:"}) as pub:
            Producer(pub.default_channel).publish("prefixed", routing_key=QUEUE)
        drain_until(conn, lambda: received, 10, "the message")
        assert [m.payload for m in received] == ["prefixed"]
        assert held_count(client, "pfx:unacked") == 1
        received[0].ack()
    assert held_count(client, "pfx:unacked") == 0 and client.llen(f"pfx:{QUEUE}") == 0
    assert not client.exists("pfx:unacked:landing-sources")


def queued(client: Redis) -> list[Any]:
    """The payloads waiting in QUEUE, the next one first."""
    items = reversed(client.lrange(QUEUE, 0, -1))
    return [json.loads(base64.b64decode(json.loads(item)["body"])) for item in items]


def keeper_found_blmove(conn: Connection) -> bool:
    keeper = conn.transport._keeper
    return keeper is not None and bool(keeper.server_has_blmove)


def test_a_consumer_of_two_queues_polls(redis_server: Any) -> None:
    """Redis cannot block on a move out of one of several lists: a consumer of two queues
    claims every `idle_poll_interval` and never sends BLMOVE; it gets the messages of both."""
    url, client = redis_server.url, redis_server.client()
    with connection(url, REDIS_TRANSPORT, heartbeat_interval=60) as conn:
        channel, received = consume(conn)
        channel.basic_consume("other", no_ack=False, callback=received.append, consumer_tag="o")
        # Once its keeper has seen a Redis with BLMOVE, the consumer could block: it does not.
        drain_until(conn, lambda: keeper_found_blmove(conn), 10, "a heartbeat")
        client.config_resetstat()
        drain(conn, 0.5)
        assert calls(client, "blmove") == 0 and calls(client, "eval") >= 2
        publish(url, "first")
        with Connection(url) as pub:
            Producer(pub.default_channel).publish("second", routing_key="other")
        drain_until(conn, lambda: len(received) == 2, 10, "both messages")
        assert sorted(m.payload for m in received) == ["first", "second"]
        for message in received:
            message.ack()
    assert held_count(client) == 0


def test_a_priority_message_reaches_a_consumer_blocked_on_its_queue(redis_server: Any) -> None:
    """A message with a priority goes to another list (kombu's priority steps) than the one the
    consumer blocks on: the claim after the block times out (`idle_block_timeout`) takes it."""
    url, client = redis_server.url, redis_server.client()
    with connection(url, REDIS_TRANSPORT, idle_block_timeout=0.5) as conn:
        _, received = consume_blocked(conn, client)
        with Connection(url) as pub:
            Producer(pub.default_channel).publish("urgent", routing_key=QUEUE, priority=5)
        drain_until(conn, lambda: received, 10, "the priority message")
        assert [m.payload for m in received] == ["urgent"]
        received[0].ack()
    assert held_count(client) == 0


def test_an_old_redis_without_blmove_is_polled(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Redis older than 6.2 (as the keeper finds it in `INFO server`; made so here by
    asking for a version no server has), an idle consumer of one queue polls as before."""
    from jobs_core.backends.celery import reliable_redis

    monkeypatch.setattr(reliable_redis, "BLMOVE_SINCE", (99, 0))
    url, client = redis_server.url, redis_server.client()
    with connection(url, REDIS_TRANSPORT, heartbeat_interval=60) as conn:
        _, received = consume(conn)
        drain(conn, 0.5)
        assert calls(client, "blmove") == 0 and calls(client, "eval") >= 2
        publish(url, "polled")
        drain_until(conn, lambda: received, 10, "the message")
        received[0].ack()
    assert held_count(client) == 0


def test_basic_get_takes_from_the_queue_and_holds(redis_server: Any) -> None:
    """`basic_get` claims with the same script, never from the landing list."""
    url, client = redis_server.url, redis_server.client()
    publish(url, "got")
    with connection(url, REDIS_TRANSPORT) as conn:
        message = conn.default_channel.basic_get(QUEUE)
        assert message is not None and message.payload == "got"
        assert held_count(client) == 1 and client.llen(QUEUE) == 0
        message.ack()
        assert held_count(client) == 0
        assert conn.default_channel.basic_get(QUEUE) is None
