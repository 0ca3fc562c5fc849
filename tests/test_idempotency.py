"""The idempotency stores (C9, C27, C32): the in-process store, and Redis with its two ways of
claiming: pending until confirmed (the key apart from the queue), and in one transaction with
the enqueue (the key beside the queue)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from jobs_core.dispatch import idempotency
from jobs_core.dispatch.idempotency import (
    Claim,
    KeyPending,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)


def claims(*pairs: tuple[str, str]) -> list[Claim]:
    return [Claim(key, dispatch_id) for key, dispatch_id in pairs]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(idempotency.time, "monotonic", fake)
    return fake


# -- in process ------------------------------------------------------------------------------


def test_memory_first_claim_wins_until_the_ttl(clock: Clock) -> None:
    store = MemoryIdempotencyStore(ttl_seconds=60)
    assert store.claim(claims(("a", "d1"), ("b", "d2"))) == [None, None]
    assert store.claim(claims(("a", "d3"))) == ["d1"]
    clock.now += 59
    assert store.claim(claims(("b", "d4"))) == ["d2"]
    clock.now += 2  # both past their 60 s
    assert store.claim(claims(("a", "d5"), ("b", "d6"))) == [None, None]
    assert len(store) == 2


def test_memory_a_batch_that_repeats_a_key_claims_it_once() -> None:
    store = MemoryIdempotencyStore()
    assert store.claim(claims(("a", "d1"), ("a", "d2"), ("b", "d3"))) == [None, "d1", None]


def test_memory_release_frees_only_its_own_claim() -> None:
    store = MemoryIdempotencyStore()
    mine = claims(("a", "d1"))
    store.claim(mine)
    store.release(claims(("a", "someone-else")))  # not its holder: nothing happens
    assert store.claim(claims(("a", "d2"))) == ["d1"]
    store.release(mine)
    assert store.claim(claims(("a", "d2"))) == [None]


def test_memory_a_full_store_forgets_its_oldest_keys_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryIdempotencyStore(max_keys=100)
    with caplog.at_level(logging.DEBUG, logger="jobs_core.idempotency"):
        for i in range(150):
            assert store.claim(claims((f"k{i}", f"d{i}"))) == [None]
    assert len(store) == 100 and store.evicted == 50
    assert store.claim(claims(("k149", "again"))) == ["d149"]  # the newest are kept
    assert store.claim(claims(("k0", "again"))) == [None]  # the oldest were forgotten
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is full (100 keys)" in warnings[0].getMessage()


def test_memory_threads_racing_for_keys_win_each_once() -> None:
    store = MemoryIdempotencyStore()
    won: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}
    lock = threading.Lock()
    keys = [f"k{i}" for i in range(2_000)]

    def race(n: int) -> None:
        for key in keys:
            [earlier] = store.claim(claims((key, f"t{n}:{key}")))
            with lock:
                if earlier is None:
                    won.setdefault(key, []).append(f"t{n}:{key}")
                else:
                    seen.setdefault(key, set()).add(earlier)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(len(winners) == 1 for winners in won.values()) and len(won) == len(keys)
    assert all(seen[key] == set(won[key]) for key in seen), "every loser names the winner"


def test_memory_refuses_nonsense_sizes() -> None:
    with pytest.raises(ValueError):
        MemoryIdempotencyStore(max_keys=0)
    with pytest.raises(ValueError):
        MemoryIdempotencyStore(ttl_seconds=0)


# -- Redis -------------------------------------------------------------------------------------


@pytest.fixture
def redis_store(resources: Any) -> Any:
    client = resources.redis
    client.flushdb()
    store = RedisIdempotencyStore(client, ttl_seconds=60, pending_seconds=1.0)
    yield store
    client.flushdb()


def test_redis_a_claim_is_pending_until_confirmed_then_holds(redis_store: Any) -> None:
    client = redis_store.client
    mine = claims(("a", "d1"))
    assert redis_store.claim(mine, wait=0) == [None]
    assert client.get("a").decode().startswith(idempotency.PENDING)
    assert 0 < client.pttl("a") <= 1000  # a sender that dies frees it soon
    redis_store.confirm(mine)
    assert client.get("a") == b"d1" and client.ttl("a") > 50
    assert redis_store.claim(claims(("a", "d2")), wait=0) == ["d1"]


def test_redis_a_released_claim_frees_the_key_and_a_stale_release_does_not(
    redis_store: Any,
) -> None:
    first = claims(("a", "d1"))
    redis_store.claim(first, wait=0)
    redis_store.release(first)
    second = claims(("a", "d1"))  # the same dispatch id, another attempt (another token)
    assert redis_store.claim(second, wait=0) == [None]
    redis_store.release(first)  # the first attempt's release comes late: it frees nothing
    redis_store.confirm(second)
    assert redis_store.claim(claims(("a", "d9")), wait=0) == ["d1"]


def test_redis_a_key_pending_for_a_dead_sender_is_waited_for_then_taken(redis_store: Any) -> None:
    """A producer that claimed and died before sending: a resend waits for its claim to lapse
    (`pending_seconds`, 1 s here), then claims and sends: the job runs once (C32)."""
    redis_store.claim(claims(("a", "d1")), wait=0)  # the producer that died
    with pytest.raises(KeyPending, match="still being sent"):
        redis_store.claim(claims(("a", "d1")), wait=0.2)
    started = time.monotonic()
    assert redis_store.claim(claims(("a", "d1")), wait=5) == [None]
    assert 0.5 < time.monotonic() - started < 3


def test_redis_a_key_pending_for_a_live_sender_ends_as_its_duplicate(redis_store: Any) -> None:
    live = claims(("a", "d1"))
    redis_store.claim(live, wait=0)
    threading.Timer(0.3, redis_store.confirm, args=(live,)).start()
    assert redis_store.claim(claims(("a", "d1")), wait=5) == ["d1"]


def test_redis_claim_and_enqueue_in_one_transaction(redis_store: Any) -> None:
    client = redis_store.client
    client.set("held", "d0")
    enqueued: list[list[int]] = []

    def enqueue(transaction: Any, free: list[int]) -> None:
        enqueued.append(free)
        for i in free:
            transaction.rpush("queue", f"job{i}")

    both = claims(("held", "d1"), ("free", "d2"))
    assert redis_store.send_claiming(both, enqueue, wait=0) == ["d0", None]
    assert enqueued == [[1]] and client.lrange("queue", 0, -1) == [b"job1"]
    assert client.get("free") == b"d2"  # held at once: no confirm needed


def test_redis_the_transaction_claims_nothing_when_its_enqueue_is_refused(
    redis_store: Any,
) -> None:
    """The claim and the enqueue are one: an enqueue Redis refuses (here a malformed command;
    in life, a Redis out of memory) aborts the whole transaction, the claim with it."""
    client = redis_store.client

    def enqueue(transaction: Any, free: list[int]) -> None:
        transaction.execute_command("LPUSH", "queue")  # no value: refused when queued

    with pytest.raises(Exception, match=r"EXECABORT|wrong number"):
        redis_store.send_claiming(claims(("free", "d1")), enqueue, wait=0)
    assert client.get("free") is None and client.llen("queue") == 0
