"""C25–C28: concurrency, throttle and payload idempotency on the job, the same on every backend.

The limits are shown with real workers: two worker processes each for Celery and Dramatiq
(`flow_workers.py`), the stand-in Inngest server's executor, and threads dispatching at once
inline. The runs record themselves in Redis (`flow_app.Store`): how many ran at once, when each
started, in which process.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import redis

from jobs_core import Concurrency, JobConfigError, JobRegistry, Retry, Throttle
from jobs_core.dispatch.port import JobDispatcherPort
from jobs_core.testing import RecordingInstrumentation

from .flow_app import Hold, Names, Store, make_jobs
from .flow_workers import FlowWorkers
from .harness import BackendHarness, keeps_first_of_a_key, stays_false, wait_until
from .models import Note, Runs

STORE_DB = 6
lock = threading.Lock()
TIMING_TOLERANCE = 0.1
"""Seconds by which two starts measured in the handlers may look closer than the limiter let
them be: a start is stamped in the handler, a little after the limiter admitted it, and that
lag differs from run to run (more so on a loaded machine)."""


@dataclass
class FlowRun:
    """One backend running `flow_app`'s jobs: dispatch through `dispatcher`, read `store`."""

    dispatcher: JobDispatcherPort
    jobs: JobRegistry[Store]
    names: Names
    store: Store
    workers: FlowWorkers | None = None

    def dispatch_all(self, job_name: str, payloads: list[Hold]) -> None:
        """Dispatch from as many threads at once (inline runs each in its dispatching thread)."""
        job = self.jobs[job_name]
        with ThreadPoolExecutor(len(payloads)) as pool:
            list(pool.map(lambda p: self.dispatcher.dispatch_sync(job, p), payloads))

    def wait_done(self, job_name: str, count: int, timeout: float = 60.0) -> None:
        def logs() -> str:
            return self.workers.logs() if self.workers is not None else ""

        try:
            wait_until(lambda: len(self.store.done(job_name)) >= count, timeout, what=job_name)
        except AssertionError:
            print(logs())
            raise
        assert self.store.failures(job_name) == []


@pytest.fixture(scope="module")
def flow_run(harness: BackendHarness, resources: Any) -> Iterator[FlowRun]:
    suffix = uuid.uuid4().hex[:8]
    store = Store(resources.redis_url(STORE_DB), suffix)
    jobs = make_jobs(suffix)
    with ExitStack() as stack:
        stack.callback(store.close)
        stack.callback(store.clear)
        if harness.name in ("celery", "dramatiq"):
            url: str = harness.url  # type: ignore[attr-defined]
            env = {"FLOW_APP_SUFFIX": suffix, "FLOW_APP_STORE": resources.redis_url(STORE_DB)}
            queue = f"flow-{suffix}"
            stack.callback(_delete_limits, url, suffix)
            workers = FlowWorkers(harness.name, url, queue, env)
            stack.callback(workers.close)
            workers.start()
            workers.start()
            dispatcher = _durable_dispatcher(harness.name, url, queue)
            stack.callback(dispatcher.close)
            yield FlowRun(dispatcher, jobs, Names(suffix), store, workers)
        else:
            events = RecordingInstrumentation()
            session = stack.enter_context(
                harness.session(jobs, context=store, instrumentation=events)
            )
            yield FlowRun(session.dispatcher, jobs, Names(suffix), store)


def _delete_limits(url: str, suffix: str) -> None:
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"jobs_core:flow:*{suffix}*", count=500))
        if keys:
            client.delete(*keys)


def _flush(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushdb()


def _durable_dispatcher(backend: str, url: str, queue: str) -> Any:
    if backend == "celery":
        from jobs_core.backends.celery import CeleryDispatcher

        return CeleryDispatcher(url, queue)
    from jobs_core.backends.dramatiq import DramatiqDispatcher

    return DramatiqDispatcher(url, queue)


# -- C25 ----------------------------------------------------------------------------------


def test_C25_at_most_limit_runs_at_once_across_workers(
    harness: BackendHarness, flow_run: FlowRun
) -> None:
    name = flow_run.names.concurrency  # Concurrency(limit=2), each run holds 200 ms
    flow_run.dispatch_all(name, [Hold(n=n, hold=0.2) for n in range(20)])
    flow_run.wait_done(name, 20)
    assert flow_run.store.peak(name) == 2
    assert sorted(flow_run.store.done(name)) == list(range(20))
    if flow_run.workers is not None:  # both processes ran jobs: the limit is shared
        assert len({s["pid"] for s in flow_run.store.starts(name)}) == 2


def test_C25_each_key_value_has_its_own_limit(harness: BackendHarness, flow_run: FlowRun) -> None:
    name = flow_run.names.keyed  # Concurrency(limit=1, key="group")
    payloads = [Hold(n=n, hold=0.2, group="ab"[n % 2]) for n in range(12)]
    flow_run.dispatch_all(name, payloads)
    flow_run.wait_done(name, 12)
    assert flow_run.store.peak(name, "group", "a") == 1
    assert flow_run.store.peak(name, "group", "b") == 1
    assert flow_run.store.peak(name) == 2  # the two keys ran side by side


LEASE = 2.0
LEASE_DB = 7


@pytest.mark.parametrize("backend", ["celery", "dramatiq"])
def test_C25_a_dead_workers_slot_comes_back_within_its_lease(backend: str, resources: Any) -> None:
    """A worker holding a slot renews its lease; once SIGKILLed, the slot is free again at
    most `JOBS_FLOW_LEASE` later. (Inline runs die with their process; on Inngest the server
    holds the slot only while its call to the app is open.)"""
    suffix = uuid.uuid4().hex[:8]
    url, store_url = resources.redis_url(LEASE_DB), resources.redis_url(STORE_DB)
    jobs, name, store = make_jobs(suffix), Names(suffix).lease, Store(store_url, suffix)
    env = {"FLOW_APP_SUFFIX": suffix, "FLOW_APP_STORE": store_url, "JOBS_FLOW_LEASE": str(LEASE)}
    with ExitStack() as stack:
        stack.callback(_flush, url)  # this test's own database
        stack.callback(store.close)
        stack.callback(store.clear)
        queues = [f"lease-{suffix}-{i}" for i in (0, 1)]  # each run to its own worker
        holder, waiter = (FlowWorkers(backend, url, q, env) for q in queues)
        stack.callback(holder.close)
        stack.callback(waiter.close)
        dispatchers = [_durable_dispatcher(backend, url, q) for q in queues]
        for dispatcher in dispatchers:
            stack.callback(dispatcher.close)
        holding = holder.start()
        dispatchers[0].dispatch_sync(jobs[name], Hold(n=1, hold=60))
        wait_until(lambda: len(store.starts(name)) == 1, 30, what="the first run to start")
        waiter.start()
        dispatchers[1].dispatch_sync(jobs[name], Hold(n=2, hold=0))
        # A window no drain can replace: the clause is about time passing. Waited out past one
        # lease (the slot would be free then, were it not renewed while its worker lives),
        # with room for the waiter's poll and a deferral through the broker.
        assert stays_false(lambda: 2 in store.done(name), 1.5 * LEASE)
        killed = time.time()
        holder.kill(holding)
        wait_until(lambda: 2 in store.done(name), LEASE + 10, what="the second run")
        started = next(s["t"] for s in store.starts(name) if s["n"] == 2)
    assert 0 < started - killed <= LEASE + 1.0


# -- C26 ----------------------------------------------------------------------------------


def test_C26_throttle_is_a_sliding_window(harness: BackendHarness, flow_run: FlowRun) -> None:
    name = flow_run.names.throttle  # Throttle(limit=5, period=1 s)
    # The throttle's own wait, kept as short as it can show the clause: 10 runs, so that some
    # must wait a period, and five windows of six starts to look at.
    flow_run.dispatch_all(name, [Hold(n=n, hold=0.0) for n in range(10)])
    flow_run.wait_done(name, 10)
    times = sorted(s["t"] for s in flow_run.store.starts(name))
    assert len(times) == 10
    assert times[-1] - times[0] >= 1.0 - TIMING_TOLERANCE
    closest = min(b - a for a, b in zip(times, times[5:]))  # 6 starts always span a period
    assert closest >= 1.0 - TIMING_TOLERANCE


# -- waiting uses no attempt and records nothing ------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        {"concurrency": Concurrency(limit=1)},
        # The runs' own wait (no drain can shorten it), as short as it can be: the shortest
        # period over WAIT_IN_WORKER (1 s: the waits go through the broker) that Inngest
        # takes (whole seconds).
        {"throttle": Throttle(limit=1, period=timedelta(seconds=2))},
    ],
    ids=["concurrency", "throttle"],
)
def test_C25_C26_waiting_uses_no_attempt_and_records_no_event(
    harness: BackendHarness,
    jobs: JobRegistry[Any],
    events: RecordingInstrumentation,
    unique: str,
    option: dict[str, Any],
) -> None:
    runs, running, peak = Runs(), [0], [0]
    name = f"c25w.{unique}"

    @jobs.job(name, retry=Retry(attempts=0), on_failure=lambda e, p, c: runs.fail(e, p), **option)
    def handler(payload: Note, ctx: Any) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        runs.add(payload.n)
        time.sleep(0.1)  # the job's work: long enough for the others to come while it runs
        with lock:
            running[0] -= 1

    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        with ThreadPoolExecutor(3) as pool:
            receipts = list(
                pool.map(
                    lambda n: s.dispatcher.dispatch_sync(handler, {"text": "w", "n": n}), range(3)
                )
            )
        wait_until(
            lambda: events.kinds(name).count("completed") == 3, 30, what="three runs, one by one"
        )
    assert runs.failures == []
    for receipt in receipts:
        # Each side in its own order: the producer records `scheduled` after its enqueue
        # returns, which a fast worker can beat with `started` (C19).
        recorded = [e for e in events.for_job(name) if e.dispatch_id == receipt.dispatch_id]
        by_phase = {
            phase: [e.kind for e in recorded if e.phase == phase]
            for phase in ("schedule", "execute")
        }
        assert by_phase == {"schedule": ["scheduled"], "execute": ["started", "completed"]}
    assert [e.attempt for e in events.for_job(name) if e.kind == "started"] == [0, 0, 0]
    assert peak[0] == 1
    if "throttle" in option:
        gaps = runs.gaps()
        assert min(gaps) >= 2.0 - TIMING_TOLERANCE, gaps


# -- C27 ----------------------------------------------------------------------------------


@pytest.mark.harnesses("all")
def test_C27_a_repeated_payload_runs_once_and_an_explicit_key_wins(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    runs = Runs()
    by_field, by_callable = f"c27f.{unique}", f"c27c.{unique}"

    @jobs.job(by_field, idempotency="text")
    def field_job(payload: Note, ctx: Any) -> None:
        runs.add(("field", payload.text, payload.n))

    @jobs.job(by_callable, idempotency=lambda p: f"note-{p.n}")
    def callable_job(payload: Note, ctx: Any) -> None:
        runs.add(("callable", payload.text, payload.n))

    with harness.session(jobs, context=runs.make_context, instrumentation=events) as s:
        first = s.dispatcher.dispatch_sync(field_job, {"text": "a", "n": 1})
        again = s.dispatcher.dispatch_sync(field_job, {"text": "a", "n": 2})  # same key: "a"
        other = s.dispatcher.dispatch_sync(field_job, {"text": "b", "n": 3})
        explicit = s.dispatcher.dispatch_sync(field_job, {"text": "a", "n": 4}, idempotency_key="x")
        s.dispatcher.dispatch_sync(callable_job, {"text": "c", "n": 7})
        s.dispatcher.dispatch_sync(callable_job, {"text": "d", "n": 7})  # same key: "note-7"
        wait_until(lambda: runs.count == 4, what="one run per distinct key")
        s.drain()  # the repeats, had any been sent, would have run by now
    ran = sorted(runs.items)
    if keeps_first_of_a_key(harness):
        assert ran == [
            ("callable", "c", 7),
            ("field", "a", 1),
            ("field", "a", 4),
            ("field", "b", 3),
        ]
    else:  # one run per key, with either payload of the key
        assert ran in [
            sorted([("callable", c, 7), ("field", "a", n), ("field", "a", 4), ("field", "b", 3)])
            for c in "cd"
            for n in (1, 2)
        ], ran
    assert first.dispatch_id == again.dispatch_id == f"{by_field}:a"
    assert other.dispatch_id == f"{by_field}:b" and explicit.dispatch_id == f"{by_field}:x"
    if harness.name != "inngest":  # Inngest's Event API does not say it dropped a repeat (C9)
        assert again.deduplicated and not first.deduplicated


# -- C28 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.5, 1.5, 8 * 86400])
def test_C28_inngest_refuses_a_throttle_period_it_cannot_take(seconds: float) -> None:
    import inngest

    from jobs_core.backends.inngest import create_inngest_functions

    jobs: JobRegistry[Any] = JobRegistry()
    jobs.define_job(  # accepted at definition: only Inngest cannot take it
        "c28.throttle",
        payload=Note,
        handle=lambda p, c: None,
        throttle=Throttle(limit=1, period=timedelta(seconds=seconds)),
    )
    client = inngest.Inngest(app_id="c28", is_production=False)
    with pytest.raises(JobConfigError) as caught:
        create_inngest_functions(jobs, context=None, client=client)
    message = str(caught.value)
    assert "c28.throttle" in message and "throttle" in message and "inngest" in message


def test_C28_inngest_takes_whole_second_periods_and_keys() -> None:
    import inngest

    from jobs_core.backends.inngest import create_inngest_functions

    jobs: JobRegistry[Any] = JobRegistry()
    jobs.define_job(
        "c28.ok",
        payload=Note,
        handle=lambda p, c: None,
        concurrency=Concurrency(limit=3, key="text"),
        throttle=Throttle(limit=10, period=timedelta(minutes=1), key="n"),
    )
    client = inngest.Inngest(app_id="c28", is_production=False)
    [fn] = create_inngest_functions(jobs, context=None, client=client)
    config = fn.get_config("http://127.0.0.1/api/inngest").main
    assert [c.model_dump() for c in config.concurrency or []] == [
        {"key": "event.data.text", "limit": 3, "scope": "fn"}
    ]
    assert config.throttle is not None
    assert (config.throttle.limit, config.throttle.period, config.throttle.key) == (
        10,
        timedelta(minutes=1),
        "event.data.n",
    )


@pytest.mark.parametrize("backend", ["celery", "dramatiq"])
def test_C28_limits_without_a_redis_every_worker_shares_are_refused(
    backend: str, resources: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    jobs.define_job(
        "c28.limited", payload=Note, handle=lambda p, c: None, concurrency=Concurrency(limit=2)
    )
    amqp = "amqp://guest:secret@127.0.0.1:1/%2F"
    with pytest.raises(JobConfigError) as caught:
        _build_worker(backend, jobs, amqp)
    message = str(caught.value)
    assert "c28.limited" in message and "concurrency" in message and backend in message
    assert "JOBS_FLOW_URL" in message and "secret" not in message
    monkeypatch.setenv("JOBS_FLOW_URL", resources.redis_url(STORE_DB))
    _build_worker(backend, jobs, amqp)  # a shared Redis for the limits: accepted


def _build_worker(backend: str, jobs: JobRegistry[Any], broker_url: str) -> None:
    if backend == "celery":
        from jobs_core.backends.celery import create_celery_app

        create_celery_app(jobs, broker_url=broker_url, queue="c28").close()
        return
    from jobs_core.backends.dramatiq import close_broker, make_worker_broker, register_actors

    broker = make_worker_broker(broker_url)
    try:
        register_actors(jobs, broker=broker, broker_url=broker_url, queue="c28")
    finally:
        close_broker(broker)


# -- definitions (C25–C27) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": Concurrency(limit=1, key="nope")}, "not a field of Note"),
        ({"throttle": Throttle(limit=1, period=timedelta(seconds=1), key="nope")}, "not a field"),
        ({"idempotency": "nope"}, "not a field of Note"),
        ({"idempotency": 42}, "a callable of the payload"),
        ({"concurrency": 2}, "must be a Concurrency"),
        ({"throttle": Concurrency(limit=1)}, "must be a Throttle"),
    ],
)
def test_C25_C27_options_are_checked_when_the_job_is_defined(
    options: dict[str, Any], message: str
) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    with pytest.raises(JobConfigError, match=message):
        jobs.define_job("flow.bad", payload=Note, handle=lambda p, c: None, **options)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Concurrency(limit=0), "limit must be an int >= 1"),
        (lambda: Concurrency(limit=True), "limit must be an int >= 1"),
        (lambda: Throttle(limit=1, period=timedelta(0)), "positive timedelta"),
        (lambda: Throttle(limit=1, period=1), "positive timedelta"),  # type: ignore[arg-type]
        (lambda: Throttle(limit=2.5, period=timedelta(seconds=1)), "int >= 1"),  # type: ignore[arg-type]
        (lambda: Concurrency(limit=1, key=""), "payload field's name"),
    ],
)
def test_C25_C26_limits_are_validated(make: Any, message: str) -> None:
    with pytest.raises(JobConfigError, match=message):
        make()


def test_C25_options_are_frozen() -> None:
    limit = Concurrency(limit=2, key="text")
    with pytest.raises(AttributeError):
        limit.limit = 3  # type: ignore[misc]
