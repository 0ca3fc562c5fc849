"""Kill and restart runs (issue 18): is any job lost when workers die or the broker goes away?

Run from outside the project as a user would: jobs are dispatched through `create_dispatcher`
onto a private redis-server, and run by the native worker command (`dramatiq
tests.soak.worker_modules -p 2 -t 8`, or `celery -A tests.soak.worker_modules:celery_app worker
--pool threads -c 8`) in its own process group. On Inngest the jobs go to the stand-in server
(tests/inngest_harness/, dev mode; the real server cannot be installed here), whose executor
calls (8 at a time) the app served by `python -m jobs_core worker
tests.soak.worker_modules:inngest_jobs` on a fixed port. The jobs are the soak's
(tests/soak/app.py: a seeded mix that succeeds, fails then succeeds, raises `RetryLater`,
`PermanentError`, or fails on every run; each run, completion and `on_failure` call is counted
in a second Redis).

- **kill**: all jobs dispatched, one worker started; when 20 % and again when 55 % have settled,
  its whole process group is SIGKILLed and a new worker started (on Inngest on the same port:
  the server keeps calling the URL it knows; a call cut or refused meanwhile is a failed
  attempt, retried after the server's backoff, as Inngest does).
- **restart**: half the jobs dispatched, one worker started; when 30 % of those have settled,
  Redis (which saves its data, as a production Redis does) is stopped for 3-5 s and started
  again on the same port (on Inngest: the server, which keeps its state, as the real one is
  durable); then the second half is dispatched. A worker that exits meanwhile is counted and
  started again, as a supervisor would.

A run ends when every job has completed or given up, or after a deadline. **lost** counts the
jobs that did neither; **gave up early** the jobs planned to succeed that gave up instead (on
Inngest a kill can spend their attempts); **dupes** the jobs that completed more than once
(at-least-once delivery); **hook x2** the jobs whose `on_failure` ran more than once.

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from jobs_core import JobsSettings, create_dispatcher
from tests.celery.workers import WorkerProcesses
from tests.inngest_harness import InngestHarness, Run
from tests.soak.app import DONE, FAILED, SUCCEEDS, inngest_attempts
from tests.soak.test_soak import Tally, _dispatch, make_plans
from tests.support.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "reliability"
CHUNK = 250
SETTLE_DEADLINE = 240.0
"""Seconds a run may take to settle after its last disruption (a killed worker's jobs come
back once its heartbeat is stale, Dramatiq: 15 s; Celery: the visibility timeout)."""

INNGEST_APP = "soak"
INNGEST_PATH = "/api/inngest"
INNGEST_FUNCTION = f"{INNGEST_APP}-soak.work"
INNGEST_CALLS = 8
"""Calls the stand-in makes at once (the other backends' workers run 8 threads)."""
INNGEST_RETRY_DELAY = 3.0
INNGEST_RETRY_BACKOFF = 2.0
INNGEST_MAX_RETRY_DELAY = 60.0
"""The stand-in's wait before retrying a call that got no answer: 3 s, 6 s, 12 s... at most
60 s, Inngest's 15 s, 30 s, 1 min, 2 min, 5 min... five times faster (without its jitter)."""
WORKER_START_DEADLINE = 60.0


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def worker_command(backend: str, port: int = 0) -> list[str]:
    if backend == "inngest":
        return [
            sys.executable,
            "-m",
            "jobs_core",
            "worker",
            "tests.soak.worker_modules:inngest_jobs",
            "--context",
            "tests.soak.app:create_context",
            "--",
            "--port",
            str(port),
            "--path",
            INNGEST_PATH,
            "--log-level",
            "warning",
        ]
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
    gave_up_early: list[int] = field(default_factory=list)
    """Jobs planned to succeed that gave up (called `on_failure`) and never completed."""
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
    attempts: int | None = None
    """Inngest: the job's `retry.attempts` on the served app."""
    worker_down: list[float] = field(default_factory=list)
    """Inngest: seconds from each kill until the new worker answered."""
    unanswered_calls: int = 0
    """Inngest: calls of the served functions that got no answer (cut or refused)."""
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        outage = f" outage={self.outage_seconds:.1f}s" if self.scenario == "restart" else ""
        inngest = ""
        if self.backend == "inngest":
            down = [round(s, 1) for s in self.worker_down]
            inngest = (
                f" attempts={self.attempts} worker_down={down}"
                f" unanswered_calls={self.unanswered_calls}"
            )
        early = self.gave_up_early
        return (
            f"RUN {self.backend} {self.scenario} seed={self.seed} jobs={self.jobs} "
            f"kills={self.kills}{outage} in_flight={self.in_flight} lost={len(self.lost)}{self.lost[:10] or ''} "
            f"gave_up_early={len(early)}{early[:10] or ''} "
            f"dupes={self.dupes} hook_x2={self.hook_repeats} worker_exits={self.worker_exits} "
            f"runs={self.runs}{inngest} drained={'yes' if self.drained else 'NO'} "
            f"seconds={self.seconds:.1f}"
        )


def worker_processes(
    backend: str, broker_url: str, store_url: str, log_dir: Path, **env: str
) -> Any:
    """tests/celery/workers.py's process keeper (own process groups, logs in `log_dir`), with
    the environment the soak's worker modules read."""
    workers = WorkerProcesses(broker_url, store_url, QUEUE, log_dir)
    workers.env.update(
        JOBS_BACKEND=backend,
        DURABILITY_REDIS_URL=store_url,
        SOAK_VISIBILITY_TIMEOUT="5",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        **env,
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
        held = ["unacked", *broker.scan_iter("unacked:held:*")]  # kombu's, then each consumer's
        return int(broker.llen(QUEUE)) == 0 and not any(int(broker.hlen(k)) for k in held)
    if int(broker.llen(f"dramatiq:{QUEUE}")) or int(broker.llen(f"dramatiq:{QUEUE}.DQ")):
        return False
    return all(int(broker.scard(k)) == 0 for k in broker.scan_iter("dramatiq:__acks__.*"))


class Broker(Protocol):
    """Where a run's jobs wait: a Redis broker, or the Inngest server."""

    url: str
    env: dict[str, str]
    """For the worker processes."""
    sync_first: bool
    """Start the worker before dispatching: Inngest runs an event's functions only if they were
    synced when it arrived."""

    def dispatcher(self) -> Any: ...
    def worker_command(self) -> list[str]: ...
    def worker_started(self, process: subprocess.Popen[bytes]) -> None: ...
    def stop(self) -> None: ...
    def start(self) -> None: ...
    def drained(self, timeout: float) -> bool: ...
    def report(self, result: RunResult) -> None: ...


class RedisBroker:
    """Celery and Dramatiq: a private redis-server that keeps its data, as a production one."""

    def __init__(self, backend: str, stack: ExitStack) -> None:
        self.backend = backend
        self.server = stack.enter_context(RedisServer())
        self.server.client().config_set("save", "3600 1")
        self.url = self.server.url
        self.env: dict[str, str] = {}
        self.sync_first = False

    def dispatcher(self) -> Any:
        settings = JobsSettings(backend=self.backend, broker_url=self.url, queue=QUEUE)
        return create_dispatcher(settings=settings)

    def worker_command(self) -> list[str]:
        return worker_command(self.backend)

    def worker_started(self, process: subprocess.Popen[bytes]) -> None:
        """The worker connects to Redis by itself."""

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def drained(self, timeout: float) -> bool:
        client = self.server.client()
        _wait(lambda: _drained(self.backend, client), timeout, "the broker to drain")
        return _drained(self.backend, self.server.client())

    def report(self, result: RunResult) -> None:
        """Nothing beyond the store's figures."""


class InngestServer:
    """The Inngest stand-in (dev mode), whose executor calls the worker at a fixed URL."""

    def __init__(self, stack: ExitStack) -> None:
        self.harness = stack.enter_context(
            InngestHarness(
                retry_delay=INNGEST_RETRY_DELAY,
                retry_backoff=INNGEST_RETRY_BACKOFF,
                max_retry_delay=INNGEST_MAX_RETRY_DELAY,
                workers=INNGEST_CALLS,
            )
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{INNGEST_PATH}"
        self.env = {
            "INNGEST_DEV": "1",
            "INNGEST_APP_NAME": INNGEST_APP,
            "INNGEST_API_BASE_URL": self.harness.api_url,
            "INNGEST_EVENT_API_BASE_URL": self.harness.event_api_url,
        }
        self.runs: list[Run] = []
        self.sync_first = True

    def dispatcher(self) -> Any:
        from jobs_core.backends.inngest import create_inngest_client

        settings = JobsSettings(backend="inngest", inngest_app_name=INNGEST_APP)
        client = create_inngest_client(settings, **self.harness.client_kwargs())
        return create_dispatcher(settings=settings, client=client)

    def worker_command(self) -> list[str]:
        return worker_command("inngest", self.port)

    def worker_started(self, process: subprocess.Popen[bytes]) -> None:
        """Wait until the worker answers; the first one is synced (registered) with the server,
        the ones that replace it serve the same functions at the same URL."""

        def listening() -> bool:
            if process.poll() is not None:
                return True
            try:
                httpx.get(self.url, timeout=1.0)
                return True
            except httpx.TransportError:
                return False

        _wait(listening, WORKER_START_DEADLINE, f"the worker to listen on {self.url}")
        if process.poll() is None and not self.harness.functions:
            self.harness.register_app(self.url)

    def stop(self) -> None:
        self.harness.pause()

    def start(self) -> None:
        self.harness.resume()

    def drained(self, timeout: float) -> bool:
        """Every run finished (no retry pending), failure functions' runs included."""
        try:
            self.runs = self.harness.wait_until_idle(timeout)
            return True
        except TimeoutError:
            print(f"  timed out after {timeout:.0f}s waiting for the runs to finish", flush=True)
            self.runs = self.harness.runs()
            return False

    def report(self, result: RunResult) -> None:
        result.attempts = inngest_attempts()
        result.unanswered_calls = sum(
            1 for run in self.runs for call in run.attempts if call.status_code is None
        )
        by_job: dict[int, list[Run]] = {}
        failure_runs: dict[str, Run] = {}
        for run in self.runs:
            if run.function_id == INNGEST_FUNCTION:
                by_job.setdefault(int(run.event["data"]["n"]), []).append(run)
            elif run.function_id == f"{INNGEST_FUNCTION}-failure":
                failure_runs[str(run.event["data"]["run_id"])] = run
        for what, jobs in (("lost", result.lost), ("gave up early", result.gave_up_early)):
            for n in jobs[:5]:
                for run in by_job.get(n, []):
                    calls = " ".join(str(c.status_code or "none") for c in run.attempts)
                    failure = failure_runs.get(run.run_id)
                    net = "none" if failure is None else failure.status
                    if failure is not None and failure.attempts:
                        net += f" (answer: {failure.attempts[-1].status_code or 'none'})"
                    result.notes.append(
                        f"{what} job {n}: run {run.status}, answers [{calls}], "
                        f"failure function: {net}"
                    )


def run_once(backend: str, scenario: str, total: int, seed: int, log_dir: Path) -> RunResult:
    plans = make_plans(total, seed)
    every = {p["n"] for p in plans}
    succeed = {p["n"] for p in plans if p["kind"] in SUCCEEDS}
    result = RunResult(backend, scenario, seed, total)
    rng = random.Random(seed)
    started = time.monotonic()
    with ExitStack() as stack:
        store_server = stack.enter_context(RedisServer())
        broker: Broker = (
            InngestServer(stack) if backend == "inngest" else RedisBroker(backend, stack)
        )
        store = store_server.client()

        def settled() -> int:
            return int(store.hlen(DONE)) + int(store.hlen(FAILED))

        def in_flight() -> int:
            return len(set(Tally.read(store).runs)) - settled()

        def unsettled() -> set[int]:
            done = {int(n) for n in store.hkeys(DONE)}
            failed = {int(n) for n in store.hkeys(FAILED)}
            return every - done - failed

        dispatcher: Any = broker.dispatcher()
        workers = worker_processes(backend, broker.url, store_server.url, log_dir, **broker.env)

        def start_worker() -> subprocess.Popen[bytes]:
            process: subprocess.Popen[bytes] = workers.start(*broker.worker_command())
            broker.worker_started(process)
            return process

        try:
            first = plans if scenario == "kill" else plans[: total // 2]
            worker = start_worker() if broker.sync_first else None
            _dispatch(dispatcher, first, time.monotonic() + 60)
            worker = worker or start_worker()
            if scenario == "kill":
                for share in (0.20, 0.55):
                    _wait(lambda s=share: settled() >= total * s, 120, f"{share:.0%} settled")
                    result.in_flight.append(in_flight())
                    killed = time.monotonic()
                    workers.kill(worker)
                    result.kills += 1
                    worker = start_worker()
                    if backend == "inngest":
                        result.worker_down.append(time.monotonic() - killed)
            else:
                _wait(lambda: settled() >= len(first) * 0.3, 120, "30% settled")
                outage = rng.uniform(3.0, 5.0)
                result.in_flight.append(in_flight())
                began = time.monotonic()
                broker.stop()
                time.sleep(outage)  # the scenario itself: the broker away for 3-5 s
                broker.start()
                result.outage_seconds = time.monotonic() - began
                _dispatch(dispatcher, plans[total // 2 :], time.monotonic() + 60)
            deadline = time.monotonic() + SETTLE_DEADLINE
            while unsettled() and time.monotonic() < deadline:
                for process in workers.processes:
                    if process.poll() is not None and process.returncode != -signal.SIGKILL:
                        if process is worker:  # exited by itself: a supervisor restarts it
                            result.worker_exits += 1
                            worker = start_worker()
                time.sleep(0.1)
            result.drained = broker.drained(30.0)
        finally:
            workers.stop_all()
            dispatcher.close()
        tally = Tally.read(store)
    result.lost = sorted(every - set(tally.done) - set(tally.failed))
    result.gave_up_early = sorted((succeed & set(tally.failed)) - set(tally.done))
    result.dupes = sum(1 for c in tally.done.values() if c > 1)
    result.hook_repeats = sum(1 for c in tally.failed.values() if c > 1)
    result.runs = sum(tally.runs.values())
    result.seconds = time.monotonic() - started
    broker.report(result)
    return result


def table(results: list[RunResult]) -> str:
    inngest = any(r.backend == "inngest" for r in results)
    away = "server away" if inngest else "Redis away"
    extra = " attempts | worker down after the kills | calls unanswered |" if inngest else ""
    rows = [
        f"| backend | scenario | run | jobs | kills | {away} | lost | gave up early | dupes "
        f"| on_failure twice | worker exits | drained |{extra} time |",
        "|" + "---|" * (13 + 3 * inngest),
    ]
    for r in results:
        i = sum(1 for other in results[: results.index(r) + 1] if other.scenario == r.scenario)
        gone = f"{r.outage_seconds:.1f} s" if r.scenario == "restart" else "-"
        cells = ""
        if inngest:
            down = ", ".join(f"{s:.1f} s" for s in r.worker_down) or "-"
            cells = f" {r.attempts} | {down} | {r.unanswered_calls} |"
        rows.append(
            f"| {r.backend} | {r.scenario} | {i} | {r.jobs:,} | {r.kills} | {gone} | "
            f"{len(r.lost)} | {len(r.gave_up_early)} | {r.dupes} | {r.hook_repeats} | "
            f"{r.worker_exits} | {'yes' if r.drained else 'no'} |{cells} {r.seconds:.1f} s |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.reliability_runs")
    parser.add_argument("backend", choices=["dramatiq", "celery", "inngest"])
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
                for note in result.notes:
                    print(f"  {note}", flush=True)
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
