"""The Dramatiq producer and actor wiring, against a real Redis (no worker needed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import dramatiq
import pytest
import redis

from jobs_core import JobRegistry, JobRequest, Retry
from jobs_core.backends.dramatiq import (
    DramatiqDispatcher,
    JobGaveUp,
    close_broker,
    make_worker_broker,
    register_actors,
)
from jobs_core.backends.dramatiq.broker import (
    DEFAULT_HEARTBEAT_TIMEOUT_MS,
    DEFAULT_MAINTENANCE_CHANCE,
)
from tests.dramatiq.app import Work, jobs, work
from tests.support.faults import dispatch_killed_before_enqueue


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from tests.support.redis_server import RedisServer

    with RedisServer() as made:
        yield made


@pytest.fixture
def url(server: Any) -> Iterator[str]:
    server.client(3).flushdb()
    yield server.url_for_db(3)


def _messages(client: redis.Redis, queue: str) -> list[dramatiq.Message[Any]]:
    ids: list[bytes] = client.lrange(f"dramatiq:{queue}", 0, -1)  # type: ignore[assignment]
    raw: list[bytes] = client.hmget(f"dramatiq:{queue}.msgs", ids)  # type: ignore[arg-type,assignment]
    return [dramatiq.Message.decode(data) for data in raw]


def _count_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, one item per request a redis-py connection sends."""
    sent: list[int] = []
    original = redis.connection.Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    return sent


def test_messages_are_what_actor_send_makes(url: str) -> None:
    dispatcher = DramatiqDispatcher(url, "fmt")
    try:
        receipt = dispatcher.dispatch_sync(work, {"n": 7})
    finally:
        dispatcher.close()
    [message] = _messages(redis.Redis.from_url(url), "fmt")
    assert message.actor_name == "durability.work"
    assert message.queue_name == "fmt"
    assert message.message_id == receipt.dispatch_id
    assert message.args == (Work(n=7).model_dump(mode="json"),)
    assert message.kwargs == {}
    assert abs(message.message_timestamp - time.time() * 1000) < 5_000


def test_a_broker_with_another_encoder_gets_the_payload_as_data(url: str) -> None:
    """The payload's JSON goes into the message as it is only under Dramatiq's JSONEncoder."""
    saved = dramatiq.get_encoder()
    dramatiq.set_encoder(dramatiq.PickleEncoder())
    dispatcher = DramatiqDispatcher(url, "pickled")
    try:
        receipt = dispatcher.dispatch_sync(work, {"n": 8})
        [message] = _messages(redis.Redis.from_url(url), "pickled")
    finally:
        dispatcher.close()
        dramatiq.set_encoder(saved)
    assert type(message) is dramatiq.Message and message.message_id == receipt.dispatch_id
    assert message.args == ({"n": 8, "seconds": 0.02},)


def test_delay_goes_to_the_delay_queue_with_an_eta(url: str) -> None:
    client = redis.Redis.from_url(url)
    dispatcher = DramatiqDispatcher(url, "later")
    try:
        before = time.time() * 1000
        dispatcher.dispatch_sync(work, {"n": 1}, delay=timedelta(seconds=30))
        dispatcher.dispatch_sync(work, {"n": 2}, run_at=datetime.now(timezone.utc) - timedelta(1))
    finally:
        dispatcher.close()
    [delayed] = _messages(client, "later.DQ")
    assert delayed.queue_name == "later.DQ"
    assert before + 29_000 < delayed.options["eta"] < before + 31_000
    [past] = _messages(client, "later")  # a run_at in the past: straight to the queue
    assert "eta" not in past.options


def test_dispatch_many_costs_two_round_trips_whatever_its_size(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One to check that Dramatiq's script is loaded, one for the whole batch."""
    dispatcher = DramatiqDispatcher(url, "many")
    try:
        dispatcher.dispatch_sync(work, {"n": -1})  # connect and load the script first
        sent = _count_round_trips(monkeypatch)
        receipts = dispatcher.dispatch_many_sync([(work, {"n": n}) for n in range(500)])
    finally:
        dispatcher.close()
    assert len(sent) <= 2
    assert len({r.dispatch_id for r in receipts}) == 500
    assert len(_messages(redis.Redis.from_url(url), "many")) == 501


def test_an_empty_script_cache_is_reloaded(url: str, server: Any) -> None:
    dispatcher = DramatiqDispatcher(url, "noscript")
    try:
        dispatcher.dispatch_sync(work, {"n": 0})
        server.client().script_flush()
        dispatcher.dispatch_sync(work, {"n": 1})
        server.client().script_flush()
        dispatcher.dispatch_many_sync([(work, {"n": n}) for n in range(2, 12)])
    finally:
        dispatcher.close()
    numbers = sorted(m.args[0]["n"] for m in _messages(redis.Redis.from_url(url), "noscript"))
    assert numbers == list(range(12))


def test_repr_hides_the_broker_password() -> None:
    dispatcher = DramatiqDispatcher("redis://user:s3cret@127.0.0.1:1/0", "q")
    try:
        assert "s3cret" not in repr(dispatcher)
        assert "***" in repr(dispatcher)
    finally:
        dispatcher.close()


def test_actors_carry_the_core_policy(url: str) -> None:
    registry = JobRegistry[Any]()

    @registry.job("policy.none", retry=Retry(attempts=0))
    def none(payload: Work, ctx: Any) -> None: ...

    broker = make_worker_broker(url)
    try:
        register_actors(registry, broker=broker, queue="policy")
        register_actors(jobs, broker=broker, queue="policy")
        for name, attempts in [("policy.none", 0), ("durability.work", 3)]:
            actor = broker.get_actor(name)
            assert actor.queue_name == "policy"
            assert actor.options["max_retries"] == attempts  # never Dramatiq's 20
            assert actor.options["throws"] == (JobGaveUp,)
        assert actor.options["min_backoff"] == 100
        assert actor.options["max_backoff"] == 3_600_000
        assert broker.heartbeat_timeout == DEFAULT_HEARTBEAT_TIMEOUT_MS  # type: ignore[attr-defined]
        assert broker.maintenance_chance == DEFAULT_MAINTENANCE_CHANCE  # type: ignore[attr-defined]
        names = {type(m).__name__ for m in broker.middleware}
        assert "TimeLimit" not in names and "Retries" in names and "JobsMiddleware" in names
    finally:
        close_broker(broker)


def test_dispatch_many_writes_what_dispatch_sync_writes(url: str) -> None:
    """A batch (one MULTI/EXEC of Dramatiq's enqueue script) leaves each message where
    `dispatch_sync` would: due ones on the queue in order, delayed ones on the delay queue."""
    client = redis.Redis.from_url(url)
    dispatcher = DramatiqDispatcher(url, "batch")
    try:
        before = time.time() * 1000
        receipts = dispatcher.dispatch_many_sync(
            [
                (work, {"n": 1}),
                JobRequest(work, {"n": 2}, delay=timedelta(seconds=30)),
                (work, {"n": 3}),
                JobRequest(work, {"n": 4}, run_at=datetime.now(timezone.utc) - timedelta(1)),
            ]
        )
    finally:
        dispatcher.close()
    due = _messages(client, "batch")
    assert [m.args[0]["n"] for m in due] == [1, 3, 4]
    assert [m.message_id for m in due] == [receipts[i].dispatch_id for i in (0, 2, 3)]
    assert all(m.queue_name == "batch" and "eta" not in m.options for m in due)
    [delayed] = _messages(client, "batch.DQ")
    assert delayed.args[0]["n"] == 2 and delayed.queue_name == "batch.DQ"
    assert before + 29_000 < delayed.options["eta"] < before + 31_000
    assert client.zcard("dramatiq:__heartbeats__") == 1  # one producer, whatever the batches


def test_a_keyed_dispatch_killed_before_its_enqueue_leaves_no_claim(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is claimed in the Redis transaction that enqueues the message, so a producer
    that dies before that transaction (a relay killed mid-send, C32) leaves nothing claimed:
    the resend goes out. When the key was claimed in a call of its own first, the resend came
    back 'deduplicated' and the job never ran."""
    dispatcher = DramatiqDispatcher(url, "killed")
    try:
        dispatch_killed_before_enqueue(monkeypatch, dispatcher, work, {"n": 1}, "order-1")
        again = dispatcher.dispatch_sync(work, {"n": 1}, idempotency_key="order-1")
        repeat = dispatcher.dispatch_sync(work, {"n": 1}, idempotency_key="order-1")
    finally:
        dispatcher.close()
    assert not again.deduplicated and repeat.deduplicated
    assert [m.args[0]["n"] for m in _messages(redis.Redis.from_url(url), "killed")] == [1]


def test_a_keyed_dispatch_claims_and_enqueues_in_one_transaction(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher = DramatiqDispatcher(url, "keyed")
    client = redis.Redis.from_url(url)
    try:
        dispatcher.dispatch_sync(work, {"n": 0}, idempotency_key="warm")  # load the script
        client.config_resetstat()
        first = dispatcher.dispatch_sync(work, {"n": 1}, idempotency_key="k")
        second = dispatcher.dispatch_sync(work, {"n": 1}, idempotency_key="k")
        many = dispatcher.dispatch_many_sync(
            [
                work.request({"n": 2}, idempotency_key="m"),
                work.request({"n": 2}, idempotency_key="m"),
            ]
        )
    finally:
        dispatcher.close()
    stats: dict[str, Any] = client.info("commandstats")
    calls = {
        name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("exec", "set")
    }
    assert calls == {"exec": 2, "set": 2}  # one transaction each, claim and enqueue: no repeat
    assert not first.deduplicated and second.deduplicated
    assert second.dispatch_id == first.dispatch_id
    assert [r.deduplicated for r in many] == [False, True]
    numbers = sorted(m.args[0]["n"] for m in _messages(redis.Redis.from_url(url), "keyed"))
    assert numbers == [0, 1, 2]
