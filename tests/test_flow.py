"""The flow-control core: option helpers, the two limiters' shared rule, the worker seam's
waiting and deferring, and `python -m jobs_core list`. (The contract, C25–C28 on every backend
with real workers, is tests/conformance/test_flow_control.py.)

Both limiters are given short polls and graces here, so that a test lets a waiter be late or
forgotten within a fraction of a second; the `time.sleep` calls below let that time pass.
"""

from __future__ import annotations

import contextvars
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import BaseModel

from jobs_core import Concurrency, DispatchError, JobConfigError, JobRegistry, Throttle
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.dispatch.idempotency import payload_key
from jobs_core.flow.limiter import STORE_ERROR_WAIT, Admission, LocalFlowLimiter
from jobs_core.flow.options import Resource, key_text
from jobs_core.flow.redis_limiter import RedisFlowLimiter
from jobs_core.worker import Delivery, JobWorker
from tests.test_cli import run_cli

REDIS_DB = 8
SLACK = 0.15
"""How late a waiter may ask again and keep its turn (the defaults are longer)."""
GRACE = 0.3
"""How late it may be and keep its place in the queue."""


class Task(BaseModel):
    account: str = "a"
    ref: str | None = None
    n: int = 0


def _conc(limit: int, name: str = "{j}:c") -> tuple[Resource, ...]:
    return (Resource("c", name, limit),)


def _throttle(limit: int, seconds: float, name: str = "{j}:t") -> tuple[Resource, ...]:
    return (Resource("t", name, limit, seconds),)


class _RunsApart:
    """A limiter asked as if each run came from its own thread (the in-process limiter knows
    which slots the runs of one thread or task hold)."""

    def __init__(self, inner: LocalFlowLimiter) -> None:
        self.inner = inner

    def admit(self, resources: Any, waiter: str) -> Admission:
        return contextvars.copy_context().run(self.inner.admit, resources, waiter)


@pytest.fixture(params=["local", "redis"])
def limiter(request: pytest.FixtureRequest, resources: Any) -> Iterator[Any]:
    if request.param == "local":
        yield _RunsApart(LocalFlowLimiter(poll=0.01, max_poll=0.05, slack=SLACK, grace=GRACE))
        return
    client = redis.Redis.from_url(resources.redis_url(REDIS_DB))
    made = RedisFlowLimiter(client, lease=0.6, poll=0.01, max_poll=0.05, slack=SLACK, grace=GRACE)
    try:
        yield made
    finally:
        made.close()
        client.flushdb()
        client.close()


# -- options --------------------------------------------------------------------------------


def test_key_text_keeps_text_and_writes_the_rest_as_json() -> None:
    assert key_text("acct-1") == "acct-1"
    assert key_text(42) == "42"
    assert key_text(None) == "null"
    assert key_text({"b": 1, "a": [1, "x"]}) == '{"a":[1,"x"],"b":1}'


def test_resources_are_per_job_option_and_key_value() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    job = jobs.define_job(
        "acct.sync",
        payload=Task,
        handle=lambda p, c: None,
        concurrency=Concurrency(limit=2, key="account"),
        throttle=Throttle(limit=5, period=timedelta(seconds=3)),
    )
    assert job.flow is not None and job.flow.limited
    assert job.flow.resources(job.name, {"account": "x", "n": 1}) == (
        Resource("c", "{acct.sync}:c:=x", 2),
        Resource("t", "{acct.sync}:t", 5, 3.0),
    )
    # a payload the worker will refuse still gets an answer (its key reads as null)
    assert job.flow.resources(job.name, "not json")[0].name == "{acct.sync}:c:=null"


def test_derived_idempotency_keys() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    by_field = jobs.define_job("f", payload=Task, handle=lambda p, c: None, idempotency="ref")
    assert by_field.flow is None and by_field.idempotency == "ref"  # no limit to pass

    def key(rule: Any, payload: Any, data: Any) -> str | None:
        return payload_key("f", rule, lambda: payload, data)

    assert key("ref", Task(ref="r1"), {"ref": "r1"}) == "r1"
    assert key("ref", Task(), {"ref": None}) is None  # no key: the dispatch runs
    assert key("ref", Task(ref=""), {"ref": ""}) is None
    plain = jobs.define_job("p", payload=Task, handle=lambda p, c: None)
    assert plain.flow is None and plain.idempotency is None
    bad = jobs.define_job("b", payload=Task, handle=lambda p, c: None, idempotency=lambda p: 7)
    assert bad.idempotency is not None
    with pytest.raises(JobConfigError, match="must return a str"):
        key(bad.idempotency, Task(), {})


def test_inline_dispatch_derives_the_key_and_an_explicit_one_wins() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    ran: list[int] = []
    job = jobs.define_job(
        "pay.charge",
        payload=Task,
        handle=lambda p, c: ran.append(p.n),
        idempotency=lambda p: p.ref,
    )
    inline = InlineDispatcher()
    assert inline.dispatch_sync(job, Task(ref="evt_1", n=1)).dispatch_id == "pay.charge:evt_1"
    assert inline.dispatch_sync(job, Task(ref="evt_1", n=2)).deduplicated
    assert not inline.dispatch_sync(job, Task(ref="evt_1", n=3), idempotency_key="k").deduplicated
    inline.dispatch_sync(job, Task(n=4))  # the callable gave None: no key
    inline.dispatch_sync(job, Task(n=5))
    assert ran == [1, 3, 4, 5]


# -- the limiters' rule (the same in process and on Redis) ----------------------------------


def test_concurrency_admits_limit_then_waits_until_a_release(limiter: Any) -> None:
    first, second = limiter.admit(_conc(2), "a"), limiter.admit(_conc(2), "b")
    third = limiter.admit(_conc(2), "c")
    assert first.admitted and second.admitted and not third.admitted
    assert 0 < third.wait <= 0.05
    first.release()
    assert limiter.admit(_conc(2), "c").admitted


def test_waiters_are_served_in_the_order_they_came(limiter: Any) -> None:
    held = limiter.admit(_conc(1), "holder")
    assert not limiter.admit(_conc(1), "first").admitted
    assert not limiter.admit(_conc(1), "second").admitted
    held.release()
    assert not limiter.admit(_conc(1), "second").admitted  # "first" is due back: its turn
    assert not limiter.admit(_conc(1), "newcomer").admitted
    assert limiter.admit(_conc(1), "first").admitted


def test_a_late_waiter_lets_others_go_and_a_lost_one_leaves_the_queue(limiter: Any) -> None:
    held = limiter.admit(_conc(1), "holder")
    told = limiter.admit(_conc(1), "late")
    assert not told.admitted
    held.release()
    time.sleep(told.wait + SLACK + 0.05)  # "late" does not come back when told, nor in the slack
    taken = limiter.admit(_conc(1), "punctual")
    assert taken.admitted
    assert not limiter.admit(_conc(1), "late").admitted  # it kept its place: next in line
    taken.release()
    assert limiter.admit(_conc(1), "late").admitted


def test_a_waiter_that_does_not_come_back_rejoins_at_the_back(limiter: Any) -> None:
    held = limiter.admit(_conc(1), "holder")
    assert not limiter.admit(_conc(1), "lost").admitted
    gone_at = time.monotonic() + 0.05 + GRACE + SLACK
    while time.monotonic() < gone_at:  # "steady" keeps asking when told; "lost" does not
        answer = limiter.admit(_conc(1), "steady")
        assert not answer.admitted
        time.sleep(answer.wait)
    held.release()
    assert not limiter.admit(_conc(1), "lost").admitted  # back in the queue, behind "steady"
    assert limiter.admit(_conc(1), "steady").admitted


def test_throttle_is_a_sliding_window_and_says_when_there_is_room(limiter: Any) -> None:
    starts: list[float] = []
    deadline = time.monotonic() + 5
    waiters = [f"w{i}" for i in range(7)]
    while waiters and time.monotonic() < deadline:
        for name in list(waiters):
            answer = limiter.admit(_throttle(3, 0.3), name)
            if answer.admitted:
                starts.append(time.monotonic())
                waiters.remove(name)
            else:
                assert 0 < answer.wait <= 0.31
        time.sleep(0.005)
    assert not waiters
    assert all(b - a >= 0.3 - 0.02 for a, b in zip(starts, starts[3:]))  # 4 starts > 1 window
    assert starts[-1] - starts[0] >= 0.6 - 0.02


def test_key_values_have_their_own_limits(limiter: Any) -> None:
    assert limiter.admit(_conc(1, "{j}:c:=a"), "a1").admitted
    assert not limiter.admit(_conc(1, "{j}:c:=a"), "a2").admitted
    assert limiter.admit(_conc(1, "{j}:c:=b"), "b1").admitted


def test_a_run_needing_both_limits_takes_neither_while_one_is_full(limiter: Any) -> None:
    both = _conc(1) + _throttle(5, 10.0)
    held = limiter.admit(_conc(1), "holder")
    assert not limiter.admit(both, "r").admitted
    held.release()
    assert limiter.admit(both, "r").admitted
    for i in range(4):
        assert limiter.admit(_throttle(5, 10.0), f"t{i}").admitted
    assert not limiter.admit(_throttle(5, 10.0), "sixth").admitted  # r's start counted


def test_a_slot_not_renewed_comes_back_after_its_lease(resources: Any) -> None:
    client = redis.Redis.from_url(resources.redis_url(REDIS_DB))
    dead = RedisFlowLimiter(client, lease=0.3)
    alive = RedisFlowLimiter(client, lease=0.3)
    try:
        kept = alive.admit(_conc(1, "{k}:c"), "kept")
        time.sleep(0.5)
        assert alive.renew() == 0  # the renewer thread also ran meanwhile
        assert not dead.admit(_conc(1, "{k}:c"), "other").admitted
        kept.release()
        lost = dead.admit(_conc(1, "{k}:c"), "other")
        assert lost.admitted
        dead.close()  # a worker that died: no renewal any more
        started = time.monotonic()
        while not alive.admit(_conc(1, "{k}:c"), "next").admitted:
            assert time.monotonic() - started < 2, "the lease never ended"
            time.sleep(0.02)
        assert 0.2 <= time.monotonic() - started <= 0.6
    finally:
        alive.close()
        client.flushdb()
        client.close()


def test_an_inline_run_that_would_wait_for_itself_is_refused() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    errors: list[BaseException] = []

    @jobs.job("self.dispatch", concurrency=Concurrency(limit=1))
    def handler(payload: Task, ctx: Any) -> None:
        if payload.n == 0:
            try:
                inline.dispatch_sync(handler, Task(n=1))
            except DispatchError as error:
                errors.append(error)

    inline = InlineDispatcher()
    inline.dispatch_sync(handler, Task(n=0))
    assert len(errors) == 1 and "wait for itself" in str(errors[0])


def test_inline_threads_share_the_dispatchers_limit() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    lock, running, peak = threading.Lock(), [0], [0]

    @jobs.job("inline.limited", concurrency=Concurrency(limit=2))
    def handler(payload: Task, ctx: Any) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    inline = InlineDispatcher()
    threads = [
        threading.Thread(target=inline.dispatch_sync, args=(handler, Task(n=n))) for n in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak[0] == 2


# -- the worker seam ------------------------------------------------------------------------


class _Refusing:
    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.asked = 0

    def admit(self, resources: Any, waiter: str) -> Admission:
        self.asked += 1
        return Admission(self.wait)


class _Broken:
    def admit(self, resources: Any, waiter: str) -> Admission:
        raise ConnectionError("store down")


class _Deferrals:
    def __init__(self) -> None:
        self.deferred: list[tuple[Delivery, timedelta]] = []

    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        raise AssertionError("a wait is not a retry")

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        raise AssertionError("a wait is not a failure")

    def defer(self, delivery: Delivery, delay: timedelta) -> None:
        self.deferred.append((delivery, delay))


def _limited() -> tuple[JobRegistry[Any], list[int]]:
    jobs: JobRegistry[Any] = JobRegistry()
    ran: list[int] = []
    jobs.define_job(
        "limited", payload=Task, handle=lambda p, c: ran.append(p.n), concurrency=Concurrency(1)
    )
    return jobs, ran


@pytest.mark.parametrize(
    ("limiter_", "wait"), [(_Refusing(5.0), 5.0), (_Broken(), STORE_ERROR_WAIT)]
)
def test_a_run_that_must_wait_is_deferred_as_the_same_attempt(limiter_: Any, wait: float) -> None:
    jobs, ran = _limited()
    worker = JobWorker(jobs, context=None, backend="test", flow=limiter_)
    settlement = _Deferrals()
    outcome = worker.run(Delivery("limited", {"n": 1}, 3, "d-1"), settlement)
    assert outcome.deferred and outcome.attempt == 3 and ran == []
    [(delivery, delay)] = settlement.deferred
    assert delivery.attempt == 3 and delay == timedelta(seconds=wait)


def test_a_short_wait_is_waited_in_the_worker() -> None:
    jobs, ran = _limited()
    answers = iter([Admission(0.05), Admission(0.05), Admission()])
    limiter = type("L", (), {"admit": lambda self, r, w: next(answers)})()
    worker = JobWorker(jobs, context=None, backend="test", flow=limiter)
    settlement = _Deferrals()
    outcome = worker.run(Delivery("limited", {"n": 1}, 0, "d-1"), settlement)
    assert outcome.completed and ran == [1] and settlement.deferred == []


def test_a_worker_with_limits_needs_a_settlement_that_defers() -> None:
    jobs, _ = _limited()
    worker = JobWorker(jobs, context=None, backend="test", flow=_Refusing(5.0))

    class NoDefer:
        def retry(self, delivery: Delivery, delay: timedelta) -> None: ...

        def give_up(self, delivery: Delivery, error: BaseException) -> None: ...

    with pytest.raises(JobConfigError, match="cannot defer"):  # when the worker is built
        worker.check(jobs["limited"], NoDefer())
    with pytest.raises(JobConfigError, match="cannot defer"):  # an adapter that did not check
        worker.run(Delivery("limited", {"n": 1}), NoDefer())


# -- python -m jobs_core list ---------------------------------------------------------------


def test_list_shows_each_jobs_flow_control() -> None:
    target = "tests.conformance.flow_app:jobs"
    env = {"FLOW_APP_SUFFIX": "cli"}
    listed = _cli("list", target, "--json", **env)
    flow = {job["name"]: job["flow_control"] for job in json.loads(listed)}
    assert flow["flow.keyed.cli"] == {"concurrency": {"limit": 1, "key": "group"}}
    assert flow["flow.throttle.cli"] == {
        "throttle": {"limit": 5, "period_seconds": 1.0, "key": None}
    }
    text = _cli("list", target, **env)
    assert "  flow control: concurrency 1 per group" in text
    assert "  flow control: throttle 5 per 1s" in text


def _cli(*args: str, **env: str) -> str:
    result = run_cli(*args, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_flow_benchmark_runs(tmp_path: Any) -> None:
    """The flow scenario of `python -m benchmarks` produces its rows (how fast is for its full
    run to say on a quiet machine, never for a test to assert)."""
    out = tmp_path / "flow.json"
    command = ["-m", "benchmarks", "--only", "flow", "--quick", "--rounds", "1", "--quiet"]
    result = subprocess.run(
        [sys.executable, *command, "--json", str(out)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(out.read_text())
    rows = {r["id"]: r for r in document["rows"]}
    assert set(rows) == {"flow.seam", "flow.inline", "flow.limit.inline", "flow.admission"}
    assert all(r["value"] > 0 for r in rows.values())
    assert rows["flow.admission"]["figures"]["admit_release_us"] > 0
