"""The in-process idempotency store: O(1) claims, expiry in claim order, a cap that says what
it forgets (C9 on inline, and the fallback of the other backends)."""

from __future__ import annotations

import logging
import math
import sys
import threading

import pytest

from jobs_core.dispatch import idempotency
from jobs_core.dispatch.idempotency import MemoryIdempotencyStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(idempotency.time, "monotonic", fake)
    return fake


def test_a_claimed_key_names_its_first_dispatch_until_it_expires(clock: FakeClock) -> None:
    store = MemoryIdempotencyStore(ttl_seconds=60)
    assert store.claim([("a", "d1"), ("b", "d2")]) == [None, None]
    assert store.claim([("a", "d3")]) == ["d1"]
    clock.now += 59
    assert store.claim([("b", "d4")]) == ["d2"]
    clock.now += 2  # both are past their 60 s now
    assert store.claim([("a", "d5"), ("b", "d6")]) == [None, None]
    assert len(store) == 2


def test_expired_keys_are_dropped_without_a_full_scan(clock: FakeClock) -> None:
    store = MemoryIdempotencyStore(ttl_seconds=10, max_keys=1_000_000)
    for i in range(50_000):
        store.claim([(f"k{i}", f"d{i}")])
        clock.now += 0.001  # 50 s in all: only the last 10 s of keys are alive
    assert 9_000 < len(store) <= 10_001
    assert store.evicted == 0


def test_beyond_the_cap_the_oldest_keys_go_first_and_it_says_so(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryIdempotencyStore(max_keys=100)
    with caplog.at_level(logging.DEBUG, logger="jobs_core.idempotency"):
        for i in range(250):
            assert store.claim([(f"k{i}", f"d{i}")]) == [None]
    kept = len(store)
    assert 99 <= kept <= 100  # trimmed by a 64th of the cap (1 key) when over it
    assert store.evicted == 250 - kept
    assert store.claim([("k249", "again")]) == ["d249"]  # the newest are kept
    assert store.claim([("k0", "again")]) == [None]  # the oldest were forgotten
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "full (100 keys)" in warnings[0].getMessage()
    forgotten = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert forgotten[0] == "idempotency key k0 forgotten (store full)"
    assert len(forgotten) == 250 - kept


def test_a_full_store_trims_a_64th_of_its_cap_at_once(clock: FakeClock) -> None:
    store = MemoryIdempotencyStore(max_keys=6_400)
    for i in range(6_400):
        store.claim([(f"k{i}", f"d{i}")])
    assert len(store) == 6_400 and store.evicted == 0  # the cap itself is kept
    store.claim([("one-more", "d")])
    assert len(store) == 6_300 and store.evicted == 101
    assert store.claim([("k101", "again")]) == ["d101"]  # the oldest left
    assert store.claim([("k100", "again")]) == [None]  # the newest forgotten (claimed anew)
    for i in range(99):  # fills up to the cap again without trimming
        store.claim([(f"more{i}", "d")])
    assert len(store) == 6_400 and store.evicted == 101


def test_a_batch_claims_each_key_once_and_names_the_first(clock: FakeClock) -> None:
    store = MemoryIdempotencyStore()
    assert store.claim([("a", "d1"), ("a", "d2"), ("b", "d3")]) == [None, "d1", None]
    assert len(store) == 2


def test_release_lets_a_failed_dispatch_be_sent_again(clock: FakeClock) -> None:
    store = MemoryIdempotencyStore()
    store.claim([("a", "d1")])
    store.release(["a"])
    assert store.claim([("a", "d2")]) == [None]


def test_expiry_follows_the_oldest_live_key_after_releases_and_an_empty_store(
    clock: FakeClock,
) -> None:
    store = MemoryIdempotencyStore(ttl_seconds=60)
    store.claim([("a", "d1")])
    store.release(["a"])
    clock.now += 30
    store.claim([("b", "d2")])  # expires at +90: the released key's +60 must not expire it
    clock.now += 31
    assert store.claim([("b", "d3")]) == ["d2"]
    clock.now += 30  # +91: b is gone, and the store is empty
    assert store.claim([("c", "d4")]) == [None]
    assert len(store) == 1
    clock.now += 61  # a key claimed into an emptied store still expires
    assert store.claim([("c", "d5")]) == [None]


def test_an_expired_key_is_claimed_anew_even_before_it_is_dropped(clock: FakeClock) -> None:
    store = MemoryIdempotencyStore(ttl_seconds=60)
    store.claim([("a", "d1")])
    clock.now += 61
    store._next_expiry = math.inf  # as if a concurrent expiry had not caught up yet
    assert store.claim([("a", "d2")]) == [None]
    assert store.claim([("a", "d3")]) == ["d2"]
    assert len(store) == 1


def test_threads_claiming_the_same_keys_get_each_key_exactly_once() -> None:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    store = MemoryIdempotencyStore(max_keys=100_000)
    keys = [f"k{i}" for i in range(2_000)]
    won: list[list[str]] = [[] for _ in range(8)]
    seen: list[dict[str, str]] = [{} for _ in range(8)]
    start = threading.Barrier(8)

    def claim_all(n: int) -> None:
        start.wait()
        order = keys[n % 2 :: 2] + keys[1 - n % 2 :: 2] if n % 3 else keys[::-1]
        for key in order:
            [earlier] = store.claim([(key, f"t{n}:{key}")])
            if earlier is None:
                won[n].append(key)
            else:
                seen[n][key] = earlier

    try:
        threads = [threading.Thread(target=claim_all, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    winners = {key: n for n, keys_won in enumerate(won) for key in keys_won}
    assert sorted(winners) == sorted(keys)  # each key won once...
    assert sum(map(len, won)) == len(keys)  # ...and by one thread only
    for n in range(8):  # every loser saw the winner's dispatch id
        for key, earlier in seen[n].items():
            assert earlier == f"t{winners[key]}:{key}"


def test_claims_and_releases_without_end_keep_live_keys_and_bounded_memory(
    clock: FakeClock,
) -> None:
    store = MemoryIdempotencyStore(max_keys=100)
    store.claim([("live", "d-live")])
    for i in range(10_000):  # failed sends of one key, each released
        assert store.claim([("retry", f"r{i}")]) == [None]
        store.release(["retry"])
    assert store.claim([("live", "again")]) == ["d-live"]
    assert store.evicted == 0 and len(store) == 1
    assert len(store._order) <= idempotency.STALE_LIMIT * 100 + 1


def test_the_expiry_pass_leaves_a_key_claimed_anew(clock: FakeClock) -> None:
    store = MemoryIdempotencyStore(ttl_seconds=60)
    store.claim([("a", "d1")])
    clock.now += 61
    store._next_expiry = math.inf  # a's first claim is still in the order when it is claimed anew
    assert store.claim([("a", "d2")]) == [None]
    store._next_expiry = clock.now  # now the expiry pass meets a's first, expired claim
    assert store.claim([("b", "d3")]) == [None]
    assert store.claim([("a", "d4")]) == ["d2"]


def test_a_live_holder_wins_over_a_claim_of_an_expired_one(clock: FakeClock) -> None:
    store = MemoryIdempotencyStore(ttl_seconds=60)
    store.claim([("a", "d1")])
    late = ("d2", clock.now + 60, "a")  # a claimer that saw an expired holder, too late
    assert store._claim_expired(late, clock.now) == store._keys["a"]
    assert store.claim([("a", "d3")]) == ["d1"]


@pytest.mark.parametrize("ttl", [0, -1, math.nan])
def test_a_store_refuses_a_ttl_that_is_not_positive(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        MemoryIdempotencyStore(ttl_seconds=ttl)
