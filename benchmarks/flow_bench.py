"""Flow control's cost and effect (issue 15), as rows of `python -m benchmarks --only flow`.

- `flow.seam`, `flow.inline`: an unlimited job (no concurrency, throttle or idempotency
  option) with the flow-control code in place, against the same job through the code as it
  was before it: the worker seam (`JobWorker.run` against `run_job_sync` + `settle`, the
  seam's body before flow control) and an inline dispatch and run (`InlineDispatcher` against
  one whose worker runs that pre-flow seam). Interleaved, ten slices a round; target >= 0.95.
- `flow.limit.<backend>`: throughput under `Concurrency(limit=n)` against the limit's
  theoretical maximum, n runs at a time of a job that holds for d seconds, so n / d jobs per
  second: inline (threads dispatching at once), and, in a full run, Celery and Dramatiq (two
  worker processes each, four threads each, limits in Redis).
- `flow.admission`: what admitting a limited run costs on Redis (the script call and the
  release's ZREM), in microseconds, beside a plain PING.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import redis

from jobs_core import Concurrency, JobRegistry
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.flow.options import Resource
from jobs_core.flow.redis_limiter import RedisFlowLimiter
from jobs_core.worker import Delivery, JobWorker

from .config import Config
from .counter import SharedCounter
from .jobs import SAMPLE, Note, noop
from .results import Row, compare, micros_beside
from .scenario import Env
from .timing import Side, interleave, median, timed

SEAM_TARGET = 0.95
INLINE_LIMIT, INLINE_HOLD = 4, 0.05
WORKER_LIMIT, WORKER_HOLD = 2, 0.1
WORKER_BACKENDS = ("celery", "dramatiq")


def rows(config: Config) -> list[str]:
    ids = ["flow.seam", "flow.inline", "flow.limit.inline"]
    if not config.quick:  # four worker processes a backend: for the full run
        ids += [f"flow.limit.{backend}" for backend in WORKER_BACKENDS]
    return [*ids, "flow.admission"]


class _Settled:
    """A settlement that does nothing (the benchmark job always completes)."""

    def retry(self, delivery: Delivery, delay: timedelta) -> None: ...

    def give_up(self, delivery: Delivery, error: BaseException) -> None: ...

    def defer(self, delivery: Delivery, delay: timedelta) -> None: ...


class _BeforeFlow(JobWorker[Any]):
    """`JobWorker.run` without its flow-control step: one run and its settlement, the baseline
    the flow-control code is measured against."""

    def run(self, delivery: Delivery, settlement: Any, job: Any = None, **_: Any) -> Any:
        job = job or self._job(delivery, settlement)
        if job is None:
            raise AssertionError("the benchmark job is known")
        return self._run_once(delivery, settlement, job)


class _BeforeFlowInline(InlineDispatcher):
    """The inline dispatcher whose worker, built exactly as its own (steps, outbound and all),
    runs the seam without the flow-control step: only flow control differs between the sides."""

    def _worker(self) -> JobWorker[Any]:
        worker = super()._worker()
        worker.__class__ = _BeforeFlow
        return worker


def _side(op: Callable[[], object]) -> Side:
    return lambda n: timed(n, lambda _: op())


def unlimited_cost(env: Env, hits: SharedCounter) -> list[Row]:
    """`flow.seam` and `flow.inline`: an unlimited job with the flow-control code in place
    against the code before it."""
    config = env.config
    n = {"smoke": 200, "quick": 2_000, "full": 20_000}[config.mode]
    delivery = Delivery(noop.name, SAMPLE, 0, "bench")
    settlement = _Settled()
    ours_worker = JobWorker(None, context=hits, backend="bench", flow=InlineDispatcher().flow)
    before_worker = _BeforeFlow(None, context=hits, backend="bench")
    ours_inline, before_inline = InlineDispatcher(context=hits), _BeforeFlowInline(context=hits)
    rows = []
    for row_id, what, ours, before in (
        (
            "flow.seam",
            "JobWorker.run of an unlimited job (the flow-control check in place) vs the seam's "
            "body without flow control (JobWorker._run_once: execute + settle)",
            lambda: ours_worker.run(delivery, settlement, noop),
            lambda: before_worker.run(delivery, settlement, noop),
        ),
        (
            "flow.inline",
            "InlineDispatcher.dispatch_sync of an unlimited job vs the same dispatcher whose "
            "worker runs the seam as it was before flow control",
            lambda: ours_inline.dispatch_sync(noop, SAMPLE),
            lambda: before_inline.dispatch_sync(noop, SAMPLE),
        ),
    ):
        env.log(f"flow: {row_id}, {n:,} x {config.rounds}")
        timings = interleave(
            {"ours": _side(ours), "before": _side(before)},
            n,
            config.rounds,
            warmup_n=n // 10,
            slices=10,
            progress=env.log,
        )
        row = compare(row_id, what, timings, "ours", "before", target=SEAM_TARGET)
        row.baseline = f"before {row.baseline.split(' ', 1)[1]}"
        rows.append(row)
    return rows


def _throughput(
    backend: str, limit: int, hold: float, count: int, seconds: Sequence[float], how: str
) -> Row:
    rates = [count / s for s in seconds]
    ceiling = limit / hold
    return Row.of(
        [rate / ceiling for rate in rates],
        id=f"flow.limit.{backend}",
        compares=f"jobs/s under Concurrency(limit={limit}), each run lasting {hold * 1000:.0f} "
        f"ms, vs the limit's theoretical maximum n / d = {ceiling:.0f}/s ({how})",
        ours=f"{median(rates):,.1f}/s",
        baseline=f"maximum n/d {ceiling:,.0f}/s",
        n=count,
        figures={"per_s": median(rates), "ceiling_per_s": ceiling},
        samples={"per_s": rates},
    )


def inline_throughput(env: Env) -> Row:
    """`count` inline dispatches from as many threads at once, of a limited job."""
    count = 20 if env.config.quick else 40
    jobs = JobRegistry[None]()
    job = jobs.define_job(
        "bench.limited",
        payload=Note,
        handle=lambda payload, ctx: time.sleep(INLINE_HOLD),
        concurrency=Concurrency(limit=INLINE_LIMIT),
    )
    dispatcher = InlineDispatcher()
    seconds = []
    env.log(f"flow: inline throughput under a limit, {count} x {env.config.rounds}")
    for _ in range(env.config.rounds):
        with ThreadPoolExecutor(count) as pool:
            start = time.perf_counter()
            list(pool.map(lambda _: dispatcher.dispatch_sync(job, SAMPLE), range(count)))
            seconds.append(time.perf_counter() - start)
    how = f"{count} threads dispatching at once"
    return _throughput("inline", INLINE_LIMIT, INLINE_HOLD, count, seconds, how)


def worker_throughput(env: Env, backend: str) -> Row:
    """Two worker processes of `backend`, `flow_app`'s Concurrency(limit=2) job."""
    from tests.conformance.flow_app import Hold, Names, Store, make_jobs
    from tests.conformance.flow_workers import FlowWorkers

    url, count, rounds = env.redis_url, 40, min(env.config.rounds, 3)
    suffix = uuid.uuid4().hex[:8]
    store, names, jobs = Store(url, suffix), Names(suffix), make_jobs(suffix)
    queue = f"bench-flow-{suffix}"
    workers = FlowWorkers(backend, url, queue, {"FLOW_APP_SUFFIX": suffix, "FLOW_APP_STORE": url})
    if backend == "celery":
        from jobs_core.backends.celery import CeleryDispatcher as Dispatcher
    else:
        from jobs_core.backends.dramatiq import DramatiqDispatcher as Dispatcher  # type: ignore[assignment]
    dispatcher = Dispatcher(url, queue)
    job, seconds = jobs[names.concurrency], []
    env.log(f"flow: {backend} throughput under a limit (two worker processes), x {rounds}")
    try:
        workers.start()
        workers.start()
        for r in range(rounds + 1):  # the first round warms the workers up, untimed
            before = len(store.done(job.name))
            start = time.perf_counter()
            dispatcher.dispatch_many_sync(
                [(job, Hold(n=i, hold=WORKER_HOLD)) for i in range(count)]
            )
            deadline = time.monotonic() + 60 + count * WORKER_HOLD
            while len(store.done(job.name)) < before + count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{backend}: the runs did not end\n{workers.logs()}")
                time.sleep(0.005)
            if r:
                seconds.append(time.perf_counter() - start)
        if store.failures(job.name):
            raise RuntimeError(f"{backend}: runs failed: {store.failures(job.name)}")
    finally:
        dispatcher.close()
        workers.close()
        store.clear()
        store.close()
    how = "two worker processes of four threads, limits in Redis"
    return _throughput(backend, WORKER_LIMIT, WORKER_HOLD, count, seconds, how)


def admission_cost(env: Env) -> Row:
    """Microseconds per admit + release of a limited run on Redis, and per PING."""
    n = {"smoke": 50, "quick": 200, "full": 2_000}[env.config.mode]
    client = redis.Redis.from_url(env.redis_url)
    limiter = RedisFlowLimiter(client)
    resources = (Resource("c", "{bench}:c", 1_000_000),)
    admits, pings = [], []
    env.log(f"flow: Redis admission, {n:,} x {env.config.rounds}")
    try:
        for _ in range(env.config.rounds):
            pings.append(timed(n, lambda _: client.ping()) / n * 1e6)
            admits.append(timed(n, lambda i: limiter.admit(resources, f"w{i}").release()) / n * 1e6)
    finally:
        limiter.close()
        client.delete(*client.keys("jobs_core:flow:*") or ["-"])
        client.close()
    return micros_beside(
        admits,
        "flow.admission",
        "wall µs per admit + release of a limited run on Redis (one script call and a ZREM), "
        "beside a PING on the same connection",
        n,
        {"admit_release": ("admit+release", admits), "ping": ("PING", pings)},
    )


def run(env: Env) -> list[Row]:
    hits = SharedCounter()
    try:
        rows = unlimited_cost(env, hits)
    finally:
        hits.close()
    rows.append(inline_throughput(env))
    if not env.config.quick:
        rows += [worker_throughput(env, backend) for backend in WORKER_BACKENDS]
    return [*rows, admission_cost(env)]


if __name__ == "__main__":
    from .__main__ import main

    sys.exit(main(["--only", "flow", *sys.argv[1:]]))
