"""Soak (issue 7): many jobs that fail at random, a SIGKILLed worker and a broker restart.

For Celery and Dramatiq each: N jobs (1,000 here by default; 10,000 with
`pytest -m soak_full --run-soak-full tests/soak -s`) whose plans are drawn from a seeded random
generator (`SOAK_SEED`, default 7): succeed at once, fail 1-2 times with an ordinary error then
succeed, raise `RetryLater` then succeed, raise `PermanentError`, or fail on every run. Two
worker processes (tests/soak/app.py, started with `python -m jobs_core worker` by the helpers in
tests/celery/workers.py and tests/dramatiq/workers.py) run them against a private redis-server
broker; one worker is SIGKILLed mid-run and replaced, and the broker is restarted once (with
its data saved, as a production broker keeps it) before the second half of the jobs is
dispatched. Each run records itself in a second Redis (the store), keyed by job number.

Afterwards: every job planned to succeed completed at least once and every job planned to give
up called `on_failure` (and did not complete); none is missing; completions beyond the first
are counted and printed (delivery is at-least-once). `on_failure` ran exactly once per job that
gave up, except where the worker that ran it was then SIGKILLed before it could ack (the
message comes back: at-least-once), which is counted and printed.

Neither backend may lose a job: Celery runs on the opt-in reliable Redis transport
(backends/celery/reliable_redis.py, `JOBS_CELERY_TRANSPORT=reliable-redis`), which moves a
message into its consumer's held hash in the step that takes it off the list, as Dramatiq's
fetch script marks messages as taken; kombu's own transport can lose one (docs/reliability-celery.md).

Celery's killed worker's messages come back once its heartbeat is 15 s old; Dramatiq's crash recovery is made fast for the test: maintenance on
every command, with the production heartbeat timeout of 15 s: a live worker's consumer threads
sleep 3 s before reconnecting and up to 5 s between ack attempts while the broker is down, and
with a shorter timeout the other worker declared it dead and ran its messages again.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from jobs_core.backends.celery.reliable_redis import DEFAULT_HEARTBEAT_TIMEOUT, held_count
from tests.soak.app import ATTEMPTS, DONE, FAILED, FAILED_BY, GIVES_UP, RUNS, SUCCEEDS, work
from tests.support.redis_server import RedisServer

SHORT_JOBS = 1_000
FULL_JOBS = 10_000
JOB_SECONDS = 0.005
"""Each run sleeps this long, so that a SIGKILL finds runs in the middle."""
DISPATCH_CHUNK = 250
QUEUE = "soak"
WORKER_THREADS = "8"
LIVE_WORKERS = 2
RECONNECT_DEADLINE = 90.0
"""How long the workers may take to reconnect after the broker restart."""


def soak_seed() -> int:
    return int(os.environ.get("SOAK_SEED", "7"))


def make_plans(total: int, seed: int) -> list[dict[str, Any]]:
    """A seeded mix: 50% succeed, 20% fail 1-2 times then succeed, 10% RetryLater then succeed,
    10% PermanentError, 10% fail on every run."""
    rng = random.Random(seed)
    plans = []
    for n in range(total):
        r = rng.random()
        if r < 0.5:
            plan: dict[str, Any] = {"kind": "ok"}
        elif r < 0.7:
            plan = {"kind": "flaky", "fails": rng.randint(1, ATTEMPTS)}
        elif r < 0.8:
            plan = {"kind": "later", "fails": 1}
        elif r < 0.9:
            plan = {"kind": "permanent"}
        else:
            plan = {"kind": "exhaust"}
        plans.append({"n": n, "seconds": JOB_SECONDS, **plan})
    return plans


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    progress: Callable[[], str] = str,
) -> None:
    """Poll `predicate` (every 50 ms) until it holds; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; {progress()}")
        time.sleep(0.05)


# -- the two backends: workers, dispatcher, broker state ----------------------------------


class Workers(Protocol):
    def start(self) -> subprocess.Popen[bytes]: ...
    def kill(self, process: subprocess.Popen[bytes]) -> None: ...
    def logs(self) -> str: ...


class SoakBackend(Protocol):
    name: str
    lost_unstarted_per_connection: int
    redelivery_margin: float

    def dispatcher(self, broker_url: str) -> Any: ...
    def workers(
        self, broker_url: str, store_url: str, log_dir: Path
    ) -> AbstractContextManager[Workers]: ...
    def drained(self, broker: Any) -> bool: ...
    def note_consumers(self, broker: Any) -> None: ...
    def consumers_connected(self, broker: Any, workers: int) -> bool: ...
    def describe(self, broker: Any) -> str: ...


CONSUMERS = "unacked:consumers"
"""The reliable Celery transport's consumers, by heartbeat (backends/celery/reliable_redis.py)."""


def soak_worker_command(*options: str) -> list[str]:
    """`python -m jobs_core worker` for the soak app (tests/soak/app.py), with `options`."""
    app = ("tests.soak.app:jobs", "--context", "tests.soak.app:create_context")
    return [sys.executable, "-m", "jobs_core", "worker", *app, *options]


class _CeleryWorkers:
    def __init__(self, processes: Any) -> None:
        self.processes = processes

    def start(self) -> subprocess.Popen[bytes]:
        options = ("--pool", "threads", "--concurrency", WORKER_THREADS, "--loglevel", "WARNING")
        process: subprocess.Popen[bytes] = self.processes.start(*soak_worker_command(*options))
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        self.processes.kill(process)

    def logs(self) -> str:
        text: str = self.processes.logs()
        return text


class CeleryBackend:
    name = "celery"
    # Messages a worker received before it reconnected cannot be acked once the broker is
    # gone; they come back when the old consumer's heartbeat is `heartbeat_timeout` old, and
    # run again: up to that long (plus a sweep and the run) after the reconnection.
    redelivery_margin = DEFAULT_HEARTBEAT_TIMEOUT * 1.1 + 10.0
    lost_unstarted_per_connection = 0  # the reliable transport moves messages atomically

    def dispatcher(self, broker_url: str) -> Any:
        from jobs_core.backends.celery import CeleryDispatcher

        return CeleryDispatcher(broker_url, QUEUE)

    @contextmanager
    def workers(self, broker_url: str, store_url: str, log_dir: Path) -> Iterator[Workers]:
        from tests.celery.workers import worker_processes

        env = {"JOBS_CELERY_TRANSPORT": "reliable-redis"}
        with worker_processes(broker_url, store_url, QUEUE, log_dir, env) as processes:
            yield _CeleryWorkers(processes)

    def drained(self, broker: Any) -> bool:
        """Nothing queued, nothing held by a consumer and waiting for its ack."""
        return int(broker.llen(QUEUE)) == 0 and held_count(broker) == 0

    def describe(self, broker: Any) -> str:
        return f"queued={broker.llen(QUEUE)} held={held_count(broker)}"

    def __init__(self) -> None:
        self.known_consumers: set[bytes] = set()

    def note_consumers(self, broker: Any) -> None:
        self.known_consumers = set(broker.zrange(CONSUMERS, 0, -1))

    def consumers_connected(self, broker: Any, workers: int) -> bool:
        """A reconnected worker's consumer has a new id, registered by its first fetch."""
        return len(set(broker.zrange(CONSUMERS, 0, -1)) - self.known_consumers) >= workers


class _DramatiqWorkers:
    def __init__(self, processes: Any) -> None:
        self.processes = processes
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        options = ["--threads", WORKER_THREADS, "--heartbeat-timeout", "15000"]
        options += ["--maintenance-chance", "1000000", "--worker-timeout", "100"]
        process: subprocess.Popen[bytes] = self.processes.start(soak_worker_command("--", *options))
        self.started.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        self.processes.kill(process)

    def logs(self) -> str:
        return "\n".join(
            f"--- worker {p.pid}\n{self.processes.output(p)[-3000:]}" for p in self.started
        )


class DramatiqBackend:
    name = "dramatiq"
    redelivery_margin = 1.0  # acks and nacks are retried on the reconnected broker
    lost_unstarted_per_connection = 0  # its fetch script marks messages as taken atomically

    def dispatcher(self, broker_url: str) -> Any:
        from jobs_core.backends.dramatiq import DramatiqDispatcher

        return DramatiqDispatcher(broker_url, QUEUE)

    @contextmanager
    def workers(self, broker_url: str, store_url: str, log_dir: Path) -> Iterator[Workers]:
        from tests.dramatiq.workers import worker_processes

        with worker_processes(broker_url, store_url, QUEUE) as processes:
            workers = _DramatiqWorkers(processes)
            try:
                yield workers
            except BaseException:
                print(workers.logs())
                raise

    def drained(self, broker: Any) -> bool:
        """Nothing queued or delayed, and no worker holds a fetched message (`__acks__`)."""
        if int(broker.llen(f"dramatiq:{QUEUE}")) or int(broker.llen(f"dramatiq:{QUEUE}.DQ")):
            return False
        return all(int(broker.scard(key)) == 0 for key in broker.scan_iter("dramatiq:__acks__.*"))

    def note_consumers(self, broker: Any) -> None:
        pass

    def consumers_connected(self, broker: Any, workers: int) -> bool:
        """Dramatiq retries a failed ack or nack until the connection is back (and re-fetched
        messages are put back by the worker broker), so no repeat comes from reconnecting:
        the window is the restart itself."""
        return True

    def describe(self, broker: Any) -> str:
        acks = {k.decode(): int(broker.scard(k)) for k in broker.scan_iter("dramatiq:__acks__.*")}
        return (
            f"queued={broker.llen(f'dramatiq:{QUEUE}')} "
            f"delayed={broker.llen(f'dramatiq:{QUEUE}.DQ')} acks={acks} "
            f"heartbeats={broker.zrange('dramatiq:__heartbeats__', 0, -1, withscores=True)}"
        )


BACKENDS: dict[str, Callable[[], SoakBackend]] = {
    "celery": CeleryBackend,
    "dramatiq": DramatiqBackend,
}


# -- the run ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the store holds, read once at the end."""

    runs: dict[int, int]
    done: dict[int, int]
    failed: dict[int, int]
    failed_by: dict[int, list[tuple[int, float]]]
    """job -> (worker pid, unix time) of each `on_failure` call, in order."""

    @classmethod
    def read(cls, store: Any) -> Tally:
        def counts(key: str) -> dict[int, int]:
            return {int(k): int(v) for k, v in store.hgetall(key).items()}

        failed_by: dict[int, list[tuple[int, float]]] = {}
        for entry in store.lrange(FAILED_BY, 0, -1):
            n, pid, at = entry.decode().split(":")
            failed_by.setdefault(int(n), []).append((int(pid), float(at)))
        return cls(counts(RUNS), counts(DONE), counts(FAILED), failed_by)


def _dispatch(dispatcher: Any, plans: Sequence[dict[str, Any]], deadline: float) -> None:
    """Dispatch in chunks; a chunk refused (the broker just restarted) is sent again until
    `deadline` (the dispatcher reconnects on the next call)."""
    for i in range(0, len(plans), DISPATCH_CHUNK):
        chunk = [(work, plan) for plan in plans[i : i + DISPATCH_CHUNK]]
        while True:
            try:
                dispatcher.dispatch_many_sync(chunk)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _lost_delivery_never_ran(plan: dict[str, Any], runs: dict[int, int]) -> bool:
    """True when every recorded run of the job asked for a retry: what was lost is a
    delivery that never ran (not a run cut short, nor a completion or a give-up)."""
    ran = runs.get(plan["n"], 0)
    if plan["kind"] in ("ok", "permanent"):
        return ran == 0
    if plan["kind"] == "exhaust":
        return ran <= ATTEMPTS
    return ran <= int(plan["fails"])


def run_soak(backend_name: str, total: int, broker_server: RedisServer, log_dir: Path) -> str:
    backend = BACKENDS[backend_name]()
    seed = soak_seed()
    plans = make_plans(total, seed)
    succeed = {p["n"] for p in plans if p["kind"] in SUCCEEDS}
    give_up = {p["n"] for p in plans if p["kind"] in GIVES_UP}
    assert succeed | give_up == set(range(total)) and succeed and give_up
    kills = restarts = 0
    died_on_restart: list[int] = []
    allowed_lost = 0
    budget = 60 + total * 0.03  # seconds for the whole run to settle, generous on 2 cores

    started = time.monotonic()
    with RedisServer() as store_server:
        store = store_server.client()
        broker_url = broker_server.url

        def settled_jobs() -> int:
            return int(store.hlen(DONE)) + int(store.hlen(FAILED))

        def missing() -> set[int]:
            done = {int(n) for n in store.hkeys(DONE)}
            failed = {int(n) for n in store.hkeys(FAILED)}
            return (succeed - done) | (give_up - failed)

        def progress() -> str:
            left = sorted(missing())[:20]
            runs = Tally.read(store).runs
            shown = [f"{n} {plans[n]['kind']} runs={runs.get(n, 0)}" for n in left]
            try:
                broker = backend.describe(broker_server.client())
            except Exception as exc:
                broker = f"broker unreadable: {exc!r}"
            return f"settled {settled_jobs()} of {total}; missing {shown}; broker: {broker}"

        dispatcher = backend.dispatcher(broker_url)
        try:
            _dispatch(dispatcher, plans[: total // 2], time.monotonic() + 60)
            with backend.workers(broker_url, store_server.url, log_dir) as workers:
                victim = workers.start()
                live = [workers.start()]
                wait_for(lambda: settled_jobs() >= total * 0.15, budget, "15% settled", progress)
                workers.kill(victim)  # SIGKILL mid-run: 8 threads busy with 5 ms runs
                kills += 1
                allowed_lost += backend.lost_unstarted_per_connection  # the killed worker's
                unsettled_at_kill = len(set(Tally.read(store).runs)) - settled_jobs()
                live.append(workers.start())  # back to two workers

                wait_for(lambda: settled_jobs() >= total * 0.35, budget, "35% settled", progress)
                # A production broker persists its data; this private one saves on shutdown.
                broker_server.client().config_set("save", "3600 1")
                backend.note_consumers(broker_server.client())
                restart_began = time.time()
                broker_server.restart()  # same port: workers and the dispatcher reconnect
                restart_ended = time.time()
                restarts += 1
                # Until a worker has reconnected, the acks of the runs it ends fail, and those
                # messages are delivered again (at-least-once): note when they all have.
                broker = broker_server.client()
                reconnect_deadline = time.monotonic() + RECONNECT_DEADLINE
                while not backend.consumers_connected(broker, LIVE_WORKERS):
                    for process in [p for p in live if p.poll() is not None]:
                        died_on_restart.append(process.pid)
                        raise AssertionError(f"a worker died:\n{workers.logs()}")
                    if time.monotonic() > reconnect_deadline:
                        raise AssertionError("the workers did not reconnect to the broker")
                    time.sleep(0.05)
                reconnected = time.time()
                allowed_lost += backend.lost_unstarted_per_connection * LIVE_WORKERS
                _dispatch(dispatcher, plans[total // 2 :], time.monotonic() + 60)

                wait_for(
                    lambda: len(missing()) <= allowed_lost,
                    budget,
                    "every job to complete or give up",
                    progress,
                )
                # The last ones may still be on their way back from the killed worker.
                stragglers_deadline = time.monotonic() + 15
                while missing() and time.monotonic() < stragglers_deadline:
                    time.sleep(0.1)
                broker = broker_server.client()
                drained_by = time.monotonic() + 30
                while not backend.drained(broker) and time.monotonic() < drained_by:
                    time.sleep(0.1)
                drained = backend.drained(broker)
                killed_pid = victim.pid
        finally:
            dispatcher.close()
        tally = Tally.read(store)
    seconds = time.monotonic() - started

    lost = sorted((succeed - set(tally.done)) | (give_up - set(tally.failed)))
    # A lost job's last delivery must be one that never ran: every run it had ended in a
    # retry (so a retry message was what got lost), or it never ran at all.
    lost_started = [n for n in lost if not _lost_delivery_never_ran(plans[n], tally.runs)]
    duplicated = {n: c for n, c in tally.done.items() if c > 1}
    repeats = {n: tally.failed_by[n] for n, c in tally.failed.items() if c > 1}
    # A repeated on_failure is at-least-once delivery when the worker that called it could not
    # ack the message afterwards: it was SIGKILLed, or the broker was down or the worker not yet
    # reconnected (its ack then fails and the message is delivered again).
    window = (restart_began - 1.0, reconnected + backend.redelivery_margin)
    by_kill = {n for n, calls in repeats.items() if calls[0][0] == killed_pid}
    by_restart = {
        n for n, calls in repeats.items() if window[0] <= calls[0][1] <= window[1]
    } - by_kill
    unexplained = {n: calls for n, calls in repeats.items() if n not in by_kill | by_restart}
    completed = len(succeed & set(tally.done))
    failed_as_expected = sum(1 for n in give_up if tally.failed.get(n) == 1)
    line = (
        f"SOAK {backend_name}: jobs={total} seed={seed} kills={kills} broker_restarts={restarts} "
        f"completed={completed}/{len(succeed)} lost={len(lost)}"
        f"{' (deliveries that never ran, jobs: ' + str(lost) + ')' if lost else ''} "
        f"duplicated={len(duplicated)} (extra completions {sum(duplicated.values()) - len(duplicated)}) "
        f"failed_as_expected={failed_as_expected}/{len(give_up)} "
        f"on_failure_repeats={len(repeats)} (after the kill {len(by_kill)}, around the broker "
        f"restart {len(by_restart)}) runs={sum(tally.runs.values())} "
        f"reconnect={reconnected - restart_ended:.1f}s "
        f"workers_died_on_broker_restart={len(died_on_restart)} "
        f"unsettled_at_kill={unsettled_at_kill} drained={'yes' if drained else 'NO'} "
        f"seconds={seconds:.1f}"
    )
    print("\n" + line)
    if duplicated:
        print(f"  duplicated completions (job: count): {dict(sorted(duplicated.items())[:50])}")
    if repeats:
        print(f"  on_failure repeats (job: [(pid, time)]): {dict(sorted(repeats.items())[:50])}")
        print(
            f"  killed worker pid {killed_pid}; broker down {restart_began:.3f}..{restart_ended:.3f}, "
            f"workers reconnected {reconnected:.3f}"
        )

    # None missing.
    assert len(lost) <= allowed_lost, f"lost {lost}: more than {allowed_lost} ({line})"
    assert not lost_started, f"a delivery that had started was lost: {lost_started}"
    # Outcomes follow the plans: nothing planned to give up completed, and vice versa.
    assert not give_up & set(tally.done), "a job planned to give up completed"
    assert not succeed & set(tally.failed), "on_failure ran for a job planned to succeed"
    assert not unexplained, f"on_failure ran more than once: {unexplained}"
    # The retry policy was followed: a job failing every run ran attempts + 1 times at least.
    for plan in plans:
        n = plan["n"]
        if n in lost:
            continue
        if plan["kind"] == "exhaust":
            assert tally.runs[n] >= ATTEMPTS + 1, f"job {n} gave up after {tally.runs[n]} runs"
        elif plan["kind"] in ("flaky", "later"):
            assert tally.runs[n] >= plan["fails"] + 1, f"job {n} ran {tally.runs[n]} times"
    assert drained, "messages were left in the broker after every job had settled"
    return line


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend_name", list(BACKENDS))
def test_soak_short(backend_name: str, redis_server: RedisServer, tmp_path: Path) -> None:
    run_soak(backend_name, SHORT_JOBS, redis_server, tmp_path)


@pytest.mark.soak_full
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("backend_name", list(BACKENDS))
def test_soak_full(backend_name: str, redis_server: RedisServer, tmp_path: Path) -> None:
    run_soak(backend_name, FULL_JOBS, redis_server, tmp_path)
