"""Kill and restart runs (issue 18): is any job lost when workers die or Redis goes away?

Run from outside the project as a user would: jobs are dispatched through `create_dispatcher`
onto a private redis-server, and run by the native worker command (`dramatiq
tests.soak.worker_modules -p 2 -t 8`, or `celery -A tests.soak.worker_modules:celery_app worker
--pool threads -c 8`) in its own process group. The jobs are the soak's (tests/soak/app.py: a
seeded mix that succeeds, fails then succeeds, raises `RetryLater`, `PermanentError`, or fails
on every run; each run, completion and `on_failure` call is counted in a second Redis).

- **kill**: all jobs dispatched, one worker started; when 20 % and again when 55 % have settled,
  its whole process group is SIGKILLed and a new worker started.
- **restart**: half the jobs dispatched, one worker started; when 30 % of those have settled,
  Redis (which saves its data, as a production Redis does) is stopped for 3-5 s and started
  again on the same port; then the second half is dispatched. A worker that exits meanwhile is
  counted and started again, as a supervisor would.

A run ends when every job has completed or given up, or after a deadline. **lost** counts the
jobs that did neither; **dupes** the jobs that completed more than once (at-least-once
delivery); **hook x2** the jobs whose `on_failure` ran more than once.

    python -m tests.soak.reliability_runs dramatiq --runs 5 --jobs 2000

prints one line per run and a Markdown table; `--json FILE` keeps every figure. Exit status 1
if any job was lost. The pytest wrapper (`tests/soak/test_reliability_runs.py`) runs one of
each with `--run-reliability-runs`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs_core import JobsSettings, create_dispatcher
from tests.celery.workers import WorkerProcesses
from tests.soak.app import DONE, FAILED, GIVES_UP, SUCCEEDS
from tests.soak.test_soak import Tally, _dispatch, make_plans
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "reliability"
CHUNK = 250
SETTLE_DEADLINE = 240.0
"""Seconds a run may take to settle after its last disruption (a killed worker's jobs come
back once its heartbeat is stale, Dramatiq: 15 s; Celery: the visibility timeout)."""


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def worker_command(backend: str) -> list[str]:
    if backend == "dramatiq":
        return [_bin("dramatiq"), "tests.soak.worker_modules", "-p", "2", "-t", "8"]
    return [
        _bin("celery"),
        "-A",
        "tests.soak.worker_modules:celery_app",
        "worker",
        "--pool",
        "threads",
        "-c",
        "8",
        "--loglevel",
        "WARNING",
    ]


@dataclass
class RunResult:
    backend: str
    scenario: str
    seed: int
    jobs: int
    lost: list[int] = field(default_factory=list)
    dupes: int = 0
    hook_repeats: int = 0
    worker_exits: int = 0
    kills: int = 0
    in_flight: list[int] = field(default_factory=list)
    """Jobs started and not yet settled when each disruption began (runs cut short)."""
    outage_seconds: float = 0.0
    seconds: float = 0.0
    drained: bool = False
    runs: int = 0

    def line(self) -> str:
        outage = f" outage={self.outage_seconds:.1f}s" if self.scenario == "restart" else ""
        return (
            f"RUN {self.backend} {self.scenario} seed={self.seed} jobs={self.jobs} "
            f"kills={self.kills}{outage} in_flight={self.in_flight} lost={len(self.lost)}{self.lost[:10] or ''} "
            f"dupes={self.dupes} hook_x2={self.hook_repeats} worker_exits={self.worker_exits} "
            f"runs={self.runs} drained={'yes' if self.drained else 'NO'} "
            f"seconds={self.seconds:.1f}"
        )


def worker_processes(backend: str, broker_url: str, store_url: str, log_dir: Path) -> Any:
    """tests/celery/workers.py's process keeper (own process groups, logs in `log_dir`), with
    the environment the soak's worker modules read."""
    workers = WorkerProcesses(broker_url, store_url, QUEUE, log_dir)
    workers.env.update(
        JOBS_BACKEND=backend,
        DURABILITY_REDIS_URL=store_url,
        SOAK_VISIBILITY_TIMEOUT="5",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return workers


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            print(f"  timed out after {timeout:.0f}s waiting for {what}", flush=True)
            return False
        time.sleep(0.05)
    return True


def _drained(backend: str, broker: Any) -> bool:
    if backend == "celery":
        return int(broker.llen(QUEUE)) == 0 and int(broker.hlen("unacked")) == 0
    if int(broker.llen(f"dramatiq:{QUEUE}")) or int(broker.llen(f"dramatiq:{QUEUE}.DQ")):
        return False
    return all(int(broker.scard(k)) == 0 for k in broker.scan_iter("dramatiq:__acks__.*"))


def run_once(backend: str, scenario: str, total: int, seed: int, log_dir: Path) -> RunResult:
    plans = make_plans(total, seed)
    succeed = {p["n"] for p in plans if p["kind"] in SUCCEEDS}
    give_up = {p["n"] for p in plans if p["kind"] in GIVES_UP}
    result = RunResult(backend, scenario, seed, total)
    rng = random.Random(seed)
    started = time.monotonic()
    with RedisServer() as store_server, RedisServer() as broker_server:
        broker_server.client().config_set("save", "3600 1")  # a Redis that keeps its data
        store = store_server.client()

        def settled() -> int:
            return int(store.hlen(DONE)) + int(store.hlen(FAILED))

        def in_flight() -> int:
            return len(set(Tally.read(store).runs)) - settled()

        def missing() -> set[int]:
            done = {int(n) for n in store.hkeys(DONE)}
            failed = {int(n) for n in store.hkeys(FAILED)}
            return (succeed - done) | (give_up - failed)

        settings = JobsSettings(backend=backend, broker_url=broker_server.url, queue=QUEUE)
        dispatcher: Any = create_dispatcher(settings=settings)
        workers = worker_processes(backend, broker_server.url, store_server.url, log_dir)
        try:
            first = plans if scenario == "kill" else plans[: total // 2]
            _dispatch(dispatcher, first, time.monotonic() + 60)
            worker = workers.start(*worker_command(backend))
            if scenario == "kill":
                for share in (0.20, 0.55):
                    _wait(lambda s=share: settled() >= total * s, 120, f"{share:.0%} settled")
                    result.in_flight.append(in_flight())
                    workers.kill(worker)
                    result.kills += 1
                    worker = workers.start(*worker_command(backend))
            else:
                _wait(lambda: settled() >= len(first) * 0.3, 120, "30% settled")
                outage = rng.uniform(3.0, 5.0)
                result.in_flight.append(in_flight())
                began = time.monotonic()
                broker_server.stop()
                time.sleep(outage)  # the scenario itself: Redis away for 3-5 s
                broker_server.start()
                result.outage_seconds = time.monotonic() - began
                _dispatch(dispatcher, plans[total // 2 :], time.monotonic() + 60)
            deadline = time.monotonic() + SETTLE_DEADLINE
            while missing() and time.monotonic() < deadline:
                for process in workers.processes:
                    if process.poll() is not None and process.returncode != -signal.SIGKILL:
                        if process is worker:  # exited by itself: a supervisor restarts it
                            result.worker_exits += 1
                            worker = workers.start(*worker_command(backend))
                time.sleep(0.1)
            _wait(lambda: _drained(backend, broker_server.client()), 30, "the broker to drain")
            result.drained = _drained(backend, broker_server.client())
        finally:
            workers.stop_all()
            dispatcher.close()
        tally = Tally.read(store)
    result.lost = sorted((succeed - set(tally.done)) | (give_up - set(tally.failed)))
    result.dupes = sum(1 for c in tally.done.values() if c > 1)
    result.hook_repeats = sum(1 for c in tally.failed.values() if c > 1)
    result.runs = sum(tally.runs.values())
    result.seconds = time.monotonic() - started
    return result


def table(results: list[RunResult]) -> str:
    rows = [
        "| backend | scenario | run | jobs | kills | Redis away | lost | dupes | on_failure twice "
        "| worker exits | drained | time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        i = sum(1 for other in results[: results.index(r) + 1] if other.scenario == r.scenario)
        away = f"{r.outage_seconds:.1f} s" if r.scenario == "restart" else "-"
        rows.append(
            f"| {r.backend} | {r.scenario} | {i} | {r.jobs:,} | {r.kills} | {away} | "
            f"{len(r.lost)} | {r.dupes} | {r.hook_repeats} | {r.worker_exits} | "
            f"{'yes' if r.drained else 'no'} | {r.seconds:.1f} s |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.reliability_runs")
    parser.add_argument("backend", choices=["dramatiq", "celery"])
    parser.add_argument("--runs", type=int, default=5, help="runs of each scenario")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--scenario", choices=["kill", "restart", "both"], default="both")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    scenarios = ["kill", "restart"] if args.scenario == "both" else [args.scenario]
    results = []
    log_root = Path(tempfile.mkdtemp(prefix="reliability-runs-"))
    try:
        for scenario in scenarios:
            for run in range(args.runs):
                log_dir = log_root / f"{scenario}-{run}"
                log_dir.mkdir()
                result = run_once(args.backend, scenario, args.jobs, args.seed + run, log_dir)
                results.append(result)
                print(result.line(), flush=True)
                if result.lost or result.worker_exits:
                    print(f"  worker logs kept in {log_dir}", flush=True)
    finally:
        if not any(r.lost or r.worker_exits for r in results):
            shutil.rmtree(log_root, ignore_errors=True)
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 1 if any(r.lost for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
