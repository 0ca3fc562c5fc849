"""A resume is claimed, then enqueued: two steps. A producer (a `send`) or a sweeper killed
between them must not leave the run parked for good (C42: a waiting run resumes exactly once,
and nothing is lost). The claimed waiter stays in the deadline set; after the grace period a
sweep delivers the run again unless the run recorded its resume (`r:<key>`). Checked on the
Redis waits of Celery and Dramatiq, on a private `redis-server`, the crash stood in for by
claiming without enqueueing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from jobs_core.steps.redis_store import KEY_PREFIX
from jobs_core.steps.waits import RESUME_GRACE, RedisWaits, Waiter, match_value
from tests.support.redis_server import RedisServer


@pytest.fixture
def client() -> Iterator[Any]:
    with RedisServer() as server:
        yield server.client()


def _waiter(run_id: str, deadline: float) -> Waiter:
    return Waiter(
        run_id=run_id,
        key="approval",
        job_name="orders.ship",
        data={"order_id": 7},
        event="orders/approved",
        field="order_id",
        value=match_value(7),
        deadline=deadline,
    )


def test_a_resume_claimed_by_a_send_that_died_is_delivered_again_after_the_grace(
    client: Any,
) -> None:
    waits = RedisWaits(client, KEY_PREFIX)
    now = time.time()
    waiter = _waiter("run-1", deadline=now + 3600)
    waits.register(waiter)

    assert waits.take_matching("orders/approved", {"order_id": 7}) == [waiter]
    # ... and the producer dies here, before it enqueues the run.
    records = KEY_PREFIX + "run-1"
    assert json.loads(client.hget(records, "s:approval")) == {"order_id": 7}
    assert waits.take_matching("orders/approved", {"order_id": 7}) == []  # resumed once
    assert waits.take_due(now + 60) == []  # within the grace: the enqueue may still come

    assert waits.take_due(now + RESUME_GRACE + 1) == [waiter]  # delivered again
    assert json.loads(client.hget(records, "s:approval")) == {"order_id": 7}  # with the event

    client.hset(records, "r:approval", "1")  # the run resumed
    assert waits.take_due(now + 2 * RESUME_GRACE + 2) == []
    assert client.zcard(waits.due) == 0


def test_a_timeout_claimed_by_a_sweeper_that_died_is_delivered_again(client: Any) -> None:
    waits = RedisWaits(client, KEY_PREFIX)
    now = time.time()
    waiter = _waiter("run-2", deadline=now - 1)
    waits.register(waiter)

    assert waits.take_due(now) == [waiter]  # claimed with None ... and the sweeper dies
    assert waits.take_due(now) == []
    assert waits.take_due(now + RESUME_GRACE + 1) == [waiter]
    assert client.hget(KEY_PREFIX + "run-2", "s:approval") == b"null"
    assert waits.take_matching("orders/approved", {"order_id": 7}) == []  # None stands


def test_a_run_that_resumed_in_time_is_not_delivered_again(client: Any) -> None:
    waits = RedisWaits(client, KEY_PREFIX)
    now = time.time()
    waiter = _waiter("run-3", deadline=now + 3600)
    waits.register(waiter)
    assert waits.take_matching("orders/approved", {"order_id": 7}) == [waiter]
    client.hset(KEY_PREFIX + "run-3", "r:approval", "1")

    assert waits.take_due(now + RESUME_GRACE + 1) == []
    assert waits.take_due(now + 2 * RESUME_GRACE) == []
    assert client.zcard(waits.due) == 0
