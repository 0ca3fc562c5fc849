"""Flow control's cost and effect: `python -m benchmarks.flow_bench [--quick] [--rounds N]`.

(a) The cost of an unlimited job (no concurrency, throttle or idempotency option) with the
flow-control code in place, against the same job through the code as it was before it: the
worker seam (`JobWorker.run` against `run_job_sync` + `settle`, the seam's body before flow
control) and an inline dispatch and run (`InlineDispatcher.dispatch_sync` against a dispatcher
whose worker runs that pre-flow seam). Interleaved rounds, ratio ours / before: the target is
>= 0.95.

(b) Throughput under `Concurrency(limit=n)` against the limit's theoretical maximum, n runs
at a time of a job that holds for d seconds, so n / d jobs per second: inline (threads
dispatching at once), and Celery and Dramatiq (two worker processes each, four threads each,
limits in Redis).

Also: what admitting a limited run costs on Redis (the script call and the release's ZREM),
beside a plain PING.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis

from jobs_core import Concurrency, JobRegistry
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.execution import run_job_sync
from jobs_core.flow import Resource
from jobs_core.flow_redis import RedisFlowLimiter
from jobs_core.worker import Delivery, JobWorker, settle

from .common import Result, compare, interleave, median, timed
from .jobs import SAMPLE, LocalHits, Note, noop

SEAM_TARGET = 0.95


class _Settled:
    """A settlement that only counts (the benchmark job always completes)."""

    def retry(self, delivery: Delivery, delay: timedelta) -> None: ...

    def give_up(self, delivery: Delivery, error: BaseException) -> None: ...

    def defer(self, delivery: Delivery, delay: timedelta) -> None: ...


class _BeforeFlow(JobWorker[Any]):
    """`JobWorker.run` as it was before flow control (commit 4a06466), word for word: the
    baseline the flow-control code is measured against."""

    def run(self, delivery: Delivery, settlement: Any, job: Any = None, **_: Any) -> Any:
        job = job or self._job(delivery, settlement)
        if job is None:
            raise AssertionError("the benchmark job is known")
        outcome = run_job_sync(
            job,
            delivery.data,
            context=self.context,
            attempt=delivery.attempt,
            dispatch_id=delivery.dispatch_id,
            backend=self.backend,
            instrumentation=self.instrumentation,
        )
        return settle(delivery, outcome, settlement)


class _BeforeFlowInline(InlineDispatcher):
    def _worker(self) -> JobWorker[Any]:
        return _BeforeFlow(
            None, context=self.context, backend="inline", instrumentation=self.events
        )


def unlimited_cost(n: int, rounds: int, log: Callable[[str], None]) -> list[Result]:
    """(a): an unlimited job with the flow-control code in place against the code before it."""
    hits = LocalHits()
    delivery = Delivery(noop.name, SAMPLE, 0, "bench")
    settlement = _Settled()
    ours_worker = JobWorker(None, context=hits, backend="bench", flow=InlineDispatcher().flow)
    before_worker = _BeforeFlow(None, context=hits, backend="bench")
    results = []
    log("flow: worker seam, unlimited job")
    seam = interleave(
        {
            "ours": lambda k: timed(k, lambda _: ours_worker.run(delivery, settlement, noop)),
            "before": lambda k: timed(k, lambda _: before_worker.run(delivery, settlement, noop)),
        },
        n,
        rounds,
        warmup_n=n // 10,
        slices=10,
        progress=log,
    )
    results.append(compare("seam", "core", n, seam, "ours", "before", target=SEAM_TARGET))
    log("flow: inline dispatch and run, unlimited job")
    ours_inline, before_inline = InlineDispatcher(context=hits), _BeforeFlowInline(context=hits)
    inline = interleave(
        {
            "ours": lambda k: timed(k, lambda _: ours_inline.dispatch_sync(noop, SAMPLE)),
            "before": lambda k: timed(k, lambda _: before_inline.dispatch_sync(noop, SAMPLE)),
        },
        n,
        rounds,
        warmup_n=n // 10,
        slices=10,
        progress=log,
    )
    results.append(
        compare("dispatch+run", "inline", n, inline, "ours", "before", target=SEAM_TARGET)
    )
    return results


def _throughput(
    backend: str, limit: int, hold: float, count: int, seconds: Sequence[float]
) -> Result:
    rates = [count / s for s in seconds]
    ceiling = limit / hold
    fraction = median(rates) / ceiling
    return Result(
        scenario=f"limit {limit}",
        backend=backend,
        n=count,
        rounds=len(rates),
        figures={"per_s": median(rates), "ceiling_per_s": ceiling, "fraction": fraction},
        ratio=fraction,
        samples={"per_s": [round(r, 1) for r in rates]},
        note=f"Concurrency(limit={limit}), each run holds {hold * 1000:.0f} ms",
    )


def inline_throughput(count: int, rounds: int) -> Result:
    """(b) inline: `count` dispatches from as many threads, Concurrency(limit=4), 50 ms each."""
    limit, hold = 4, 0.05
    jobs = JobRegistry[None]()
    job = jobs.define_job(
        "bench.limited",
        payload=Note,
        handle=lambda payload, ctx: time.sleep(hold),
        concurrency=Concurrency(limit=limit),
    )
    dispatcher = InlineDispatcher()
    seconds = []
    for _ in range(rounds):
        with ThreadPoolExecutor(count) as pool:
            start = time.perf_counter()
            list(pool.map(lambda _: dispatcher.dispatch_sync(job, SAMPLE), range(count)))
            seconds.append(time.perf_counter() - start)
    return _throughput("inline", limit, hold, count, seconds)


def worker_throughput(backend: str, url: str, count: int, rounds: int) -> Result:
    """(b) Celery or Dramatiq: two worker processes, `flow_app`'s Concurrency(limit=2) job."""
    from tests.conformance.flow_app import Hold, Names, Store, make_jobs
    from tests.conformance.flow_workers import FlowWorkers

    hold, suffix = 0.1, uuid.uuid4().hex[:8]
    store, names, jobs = Store(url, suffix), Names(suffix), make_jobs(suffix)
    queue = f"bench-flow-{suffix}"
    workers = FlowWorkers(backend, url, queue, {"FLOW_APP_SUFFIX": suffix, "FLOW_APP_STORE": url})
    if backend == "celery":
        from jobs_core.backends.celery import CeleryDispatcher as Dispatcher
    else:
        from jobs_core.backends.dramatiq import DramatiqDispatcher as Dispatcher  # type: ignore[assignment]
    dispatcher = Dispatcher(url, queue)
    job, seconds = jobs[names.concurrency], []
    try:
        workers.start()
        workers.start()
        for r in range(rounds + 1):  # the first round warms the workers up, untimed
            before = len(store.done(job.name))
            start = time.perf_counter()
            dispatcher.dispatch_many_sync([(job, Hold(n=i, hold=hold)) for i in range(count)])
            deadline = time.monotonic() + 60 + count * hold
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
    return _throughput(backend, 2, hold, count, seconds)


def admission_cost(url: str, n: int) -> dict[str, float]:
    """Microseconds per admit + release of a limited run on Redis, and per PING."""
    client = redis.Redis.from_url(url)
    limiter = RedisFlowLimiter(client)
    resources = (Resource("c", "{bench}:c", 1_000_000),)
    try:
        ping = timed(n, lambda _: client.ping()) / n * 1e6
        admit = timed(n, lambda i: limiter.admit(resources, f"w{i}").release()) / n * 1e6
    finally:
        limiter.close()
        client.delete(*client.keys("jobs_core:flow:*") or ["-"])
        client.close()
    return {"admit_release_us": admit, "ping_us": ping}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flow_bench")
    parser.add_argument("--quick", action="store_true", help="small sizes (a check, not figures)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--backends", default="inline,celery,dramatiq")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    n = 3_000 if args.quick else 20_000
    count = 20 if args.quick else 40
    backends = [b for b in args.backends.split(",") if b]

    def log(message: str) -> None:
        print(f"[flow-bench] {message}", file=sys.stderr, flush=True)

    from tests.support.redis_server import RedisServer

    results = unlimited_cost(n, rounds, log)
    with RedisServer() as server:
        if "inline" in backends:
            log("flow: inline throughput under a limit")
            results.append(inline_throughput(count, rounds))
        for backend in ("celery", "dramatiq"):
            if backend in backends:
                log(f"flow: {backend} throughput under a limit (two worker processes)")
                results.append(worker_throughput(backend, server.url, count, min(rounds, 3)))
        admission = admission_cost(server.url, n // 10)
    print(_table(results, admission))
    if args.json is not None:
        document = {
            "results": [r.to_json() for r in results],
            "admission": admission,
        }
        args.json.write_text(json.dumps(document, indent=2))
    return 0


def _table(results: list[Result], admission: dict[str, float]) -> str:
    lines = ["(a) an unlimited job, flow-control code in place (ours) vs the code before it"]
    for r in results:
        f = r.figures
        if "ours_per_s" in f:
            met = "yes" if r.met else "NO"
            lines.append(
                f"  {r.scenario:<13} {r.backend:<7} ours {f['ours_per_s']:>9,.0f}/s  before "
                f"{f['before_per_s']:>9,.0f}/s  ratio {r.ratio:.3f}  (target >= {SEAM_TARGET}: {met})"
                f"  cpu {f['ours_cpu_us']:.2f} / {f['before_cpu_us']:.2f} us "
                f"= {f['before_cpu_us'] / f['ours_cpu_us']:.3f}"
            )
    lines.append("(b) throughput under a concurrency limit vs its theoretical maximum n / d")
    for r in results:
        f = r.figures
        if "ceiling_per_s" in f:
            lines.append(
                f"  {r.backend:<9} {r.note}: {f['per_s']:6.1f}/s of {f['ceiling_per_s']:.0f}/s "
                f"= {f['fraction']:.2f}  (rounds: {r.samples['per_s']})"
            )
    lines.append(
        f"Redis admission of a limited run: {admission['admit_release_us']:.0f} us per admit + "
        f"release, {admission['ping_us']:.0f} us per PING"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
