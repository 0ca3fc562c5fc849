"""Kill and restart runs of Celery, run as a user runs them (C20, C21), on three brokers.

Each run starts a private broker, a private redis-server as the store the jobs record themselves
in, and real workers with the native command line, `celery -A tests.celery.app:celery_app
worker` (prefork, Celery's default pool, 4 processes), on the configuration a user gets from
`JOBS_BROKER_URL` (and `JOBS_CELERY_TRANSPORT`); 10 ms jobs. The brokers (`SETUPS`):

- `rabbitmq`: a private RabbitMQ node; jobs_core's RabbitMQ configuration (quorum queue,
  publisher confirms, dead-letter queue), nothing else set;
- `reliable-redis`: a persistent redis-server and the opt-in reliable transport;
- `stock-redis`: a persistent redis-server and kombu's own transport, with a 3 s visibility
  timeout so that a killed worker's jobs come back within the run at all (the baseline the
  docs print; no setting for production: any job longer than 3 s would run twice).

- kill run: one worker; its process group is SIGKILLed at 25% and at 60% of the jobs done, and
  a new worker is started at once each time.
- restart run: two workers; the broker is stopped (SIGTERM: it writes its data) for 3-5 s at
  30% of the first half of the jobs done, then started again; the other half is dispatched after.

Printed per run: jobs lost (never completed), jobs completed more than once (delivery is
at-least-once), how long the jobs a killed worker was running took to come back (completed
again), and whether every worker survived the restart without being started again.

    python -m tests.celery.runs kill --broker rabbitmq --runs 5
    python -m tests.celery.runs restart --broker stock-redis --runs 5

tests/celery/test_durability.py runs one of each on `rabbitmq` and `reliable-redis` in the suite,
of 1,000 jobs (C20's count).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs_core.backends.celery import CeleryDispatcher
from tests.celery.app import COMPLETIONS, DONE, STARTED, work
from tests.celery.workers import wait_for, worker_processes
from tests.support.rabbitmq_server import RabbitMQServer
from tests.support.redis_server import RedisServer

SETUPS = ("rabbitmq", "reliable-redis", "stock-redis")
JOBS = 2_000
JOB_SECONDS = 0.01
QUEUE = "runs"
WORKER = ("--pool", "prefork", "--concurrency", "4", "--loglevel", "INFO")
SETTLE = 120.0
"""Seconds a run may take to settle after its last disturbance, generous on 2 busy cores."""


@dataclass
class RunResult:
    kind: str
    jobs: int
    lost: list[int]
    duplicated: int
    """Jobs completed more than once."""
    seconds: float
    came_back: list[float] = field(default_factory=list)
    """Per kill: seconds until every job the killed worker held had completed again."""
    held_at_kill: list[int] = field(default_factory=list)
    workers_died: int = 0
    broker_down: float = 0.0
    resumed: float = 0.0
    """Seconds from the broker's return until jobs completed again."""

    def line(self) -> str:
        text = (
            f"{self.kind} run: jobs={self.jobs} lost={len(self.lost)} "
            f"duplicated={self.duplicated} seconds={self.seconds:.1f}"
        )
        if self.kind.startswith("kill"):
            text += (
                f" held_at_kill={self.held_at_kill}"
                f" came_back_s={[round(s, 1) for s in self.came_back]}"
            )
        else:
            text += (
                f" broker_down_s={self.broker_down:.1f} resumed_after_s={self.resumed:.1f}"
                f" workers_died={self.workers_died}"
            )
        if self.lost:
            text += f" LOST={self.lost[:20]}"
        return text


def held_jobs(broker: Any) -> set[int]:
    """Redis: job numbers delivered and not acked, in the reliable transport's held hashes and
    landing lists or in kombu's own `unacked` hash."""
    envelopes = [json.loads(value)[0] for value in broker.hvals("unacked")]
    for key in broker.scan_iter("unacked:held:*"):
        for entry in broker.hvals(key):
            length, _, rest = entry.partition(b":")
            envelopes.append(json.loads(rest[int(length) :]))
    for key in broker.scan_iter("unacked:landing:*"):
        envelopes.extend(json.loads(item) for item in broker.lrange(key, 0, -1))
    return {int(json.loads(base64.b64decode(e["body"]))[0][0]["n"]) for e in envelopes}


@dataclass
class Broker:
    """A private broker of one setup: its server, and what its workers need to know."""

    setup: str
    server: Any
    env: dict[str, str]

    @property
    def url(self) -> str:
        url: str = self.server.url
        return url

    def left(self) -> int:
        """Messages of the run's queue not yet acked: waiting, or delivered to a worker."""
        if self.setup == "rabbitmq":
            return sum(self.server.queue_counts(QUEUE))
        client = self.server.client()
        try:
            return int(client.llen(QUEUE)) + len(held_jobs(client))
        finally:
            client.close()


@contextmanager
def private_broker(setup: str) -> Iterator[Broker]:
    """A broker of `setup` (one of `SETUPS`), stopped on exit."""
    if setup == "rabbitmq":
        with RabbitMQServer() as node:
            yield Broker(setup, node, {})
        return
    env = {"JOBS_CELERY_TRANSPORT": "reliable-redis"}
    if setup == "stock-redis":
        env = {"JOBS_CELERY_TRANSPORT": "kombu", "CELERY_TEST_STOCK_KOMBU": "1"}
    elif setup != "reliable-redis":
        raise ValueError(f"unknown setup {setup!r}: one of {SETUPS}")
    with RedisServer(persistent=True) as server:
        yield Broker(setup, server, env)


def running(store: Any) -> set[int]:
    """Jobs started and not completed: what a killed worker had in hand."""
    return {int(n) for n in store.hkeys(STARTED)} - _done(store)


def dispatch(dispatcher: CeleryDispatcher, numbers: Sequence[int], deadline: float) -> None:
    """Dispatch in chunks; a chunk refused while the broker is away is sent again."""
    items = [(work, {"n": n, "seconds": JOB_SECONDS}) for n in numbers]
    for i in range(0, len(items), 250):
        while True:
            try:
                dispatcher.dispatch_many_sync(items[i : i + 250])
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _done(store: Any) -> set[int]:
    return {int(n) for n in store.smembers(DONE)}


def _tally(store: Any, total: int) -> tuple[list[int], int]:
    lost = sorted(set(range(total)) - _done(store))
    completions = {int(k): int(v) for k, v in store.hgetall(COMPLETIONS).items()}
    return lost, sum(1 for c in completions.values() if c > 1)


def _progress(store: Any, total: int) -> Callable[[], str]:
    def progress() -> str:
        missing = sorted(set(range(total)) - _done(store))
        return f"done={total - len(missing)} of {total}, missing {missing[:10]}"

    return progress


KILL_TRIES = 5
"""Kills at most per planned kill, until one catches a job in hand."""


def kill_run(setup: str, log_dir: Path, total: int = JOBS) -> RunResult:
    started = time.monotonic()
    result = RunResult(f"kill ({setup})", total, [], 0, 0.0)
    with private_broker(setup) as broker, RedisServer() as store_server:
        store = store_server.client()
        progress = _progress(store, total)
        dispatcher = CeleryDispatcher(broker.url, QUEUE)
        try:
            dispatch(dispatcher, range(total), time.monotonic() + 60)
        finally:
            dispatcher.close()
        with worker_processes(broker.url, store_server.url, QUEUE, log_dir, broker.env) as workers:
            worker = workers.start_celery_cli_worker(*WORKER)
            pending: list[tuple[float, set[int]]] = []
            for share in (0.25, 0.60):
                wait_for(lambda s=share: len(_done(store)) >= total * s, SETTLE, "progress")  # type: ignore[misc]
                held: set[int] = set()
                for _ in range(KILL_TRIES):
                    # a kill between two jobs catches nothing running: wait for one, and kill
                    # again if the job still ended first (the jobs are short)
                    wait_for(lambda: bool(running(store)), SETTLE, "running jobs")
                    workers.kill(worker)  # SIGKILL, process group: the worker and its pool
                    killed_at = time.monotonic()
                    held = running(store)
                    worker = workers.start_celery_cli_worker(*WORKER)
                    if held:
                        break
                result.held_at_kill.append(len(held))
                pending.append((killed_at, held))
            for killed_at, held in pending:
                wait_for(lambda h=held: h <= _done(store), SETTLE, "the killed jobs", progress)  # type: ignore[misc]
                result.came_back.append(time.monotonic() - killed_at)
            _settle(lambda: len(_done(store)) == total, broker)
        result.lost, result.duplicated = _tally(store, total)
    result.seconds = time.monotonic() - started
    return result


def restart_run(setup: str, log_dir: Path, total: int = JOBS, seed: int | None = None) -> RunResult:
    rng = random.Random(seed)
    started = time.monotonic()
    result = RunResult(f"restart ({setup})", total, [], 0, 0.0)
    first, second = range(total // 2), range(total // 2, total)
    with private_broker(setup) as broker, RedisServer() as store_server:
        store = store_server.client()
        progress = _progress(store, total)
        dispatcher = CeleryDispatcher(broker.url, QUEUE)
        try:
            dispatch(dispatcher, first, time.monotonic() + 60)
            with worker_processes(
                broker.url, store_server.url, QUEUE, log_dir, broker.env
            ) as workers:
                live = [workers.start_celery_cli_worker(*WORKER) for _ in range(2)]
                wait_for(lambda: len(_done(store)) >= len(first) * 0.3, SETTLE, "progress")
                down = rng.uniform(3.0, 5.0)
                stopped_at = time.monotonic()
                broker.server.stop()  # SIGTERM: the broker writes its data and exits
                time.sleep(max(0.0, down - (time.monotonic() - stopped_at)))
                broker.server.start()
                back_at = time.monotonic()
                result.broker_down = back_at - stopped_at
                done_at_return = len(_done(store))
                wait_for(
                    lambda: len(_done(store)) > done_at_return or len(_done(store)) == total,
                    SETTLE,
                    "jobs to complete again after the restart",
                    progress,
                )
                result.resumed = time.monotonic() - back_at
                dispatch(dispatcher, second, time.monotonic() + 60)

                def settled() -> bool:
                    for process in [p for p in live if p.poll() is not None]:
                        # A worker that stopped instead of reconnecting: counted, and started
                        # again as a supervisor would.
                        result.workers_died += 1
                        live.remove(process)
                        live.append(workers.start_celery_cli_worker(*WORKER))
                    return len(_done(store)) == total

                _settle(settled, broker)
        finally:
            dispatcher.close()
        result.lost, result.duplicated = _tally(store, total)
    result.seconds = time.monotonic() - started
    return result


def _settle(all_done: Callable[[], bool], broker: Broker) -> None:
    """Wait until every job completed, or until nothing is left that could still complete
    (nothing queued or held for 5 s: what is missing then is lost); then the broker must be
    drained: what came back ran again."""
    deadline = time.monotonic() + SETTLE
    idle_since: float | None = None
    while not all_done() and time.monotonic() < deadline:
        if broker.left() == 0:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 5:
                break
        else:
            idle_since = None
        time.sleep(0.5 if broker.setup == "rabbitmq" else 0.1)
    wait_for(
        lambda: broker.left() == 0, 60, "the broker to be drained", lambda: f"left={broker.left()}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["kill", "restart"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--broker", choices=SETUPS, default="rabbitmq")
    args = parser.parse_args(argv)
    results = []
    for n in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="jobs-core-runs-") as log_dir:
            run = kill_run if args.kind == "kill" else restart_run
            result = run(args.broker, Path(log_dir), args.jobs)
        results.append(result)
        print(f"run {n + 1}: {result.line()}", flush=True)
    lost = sum(len(r.lost) for r in results)
    print(
        f"SUMMARY {args.kind} ({args.broker}): runs={len(results)} jobs_each={args.jobs} "
        f"runs_with_loss={sum(1 for r in results if r.lost)} lost_total={lost} "
        f"duplicated_total={sum(r.duplicated for r in results)} "
        f"median_seconds={statistics.median(r.seconds for r in results):.1f}"
        + (
            f" came_back_max_s={max(max(r.came_back) for r in results):.1f}"
            if args.kind == "kill"
            else f" workers_died={sum(r.workers_died for r in results)}"
        )
    )
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
