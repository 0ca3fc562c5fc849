"""C31–C33 end to end: outbox rows, relays in their own processes, a real Dramatiq worker.

Each test runs on SQLite and on PostgreSQL, with a private Redis broker and a second Redis (the
"store") where every run of a job counts itself (tests/outbox/app.py). Processes are real and
killed with SIGKILL: the producer after its commit, a relay between sending and marking sent.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.orm import Session

from jobs_core.outbox import Outbox, outbox_table
from tests.dramatiq.workers import WorkerProcesses, drain_queue, wait_for, worker_processes
from tests.outbox.app import charge, runs
from tests.outbox.procs import SENT_BY, SENT_KEYS

pytestmark = pytest.mark.timeout(240)

QUEUE = "outbox"


def worker_command(*backend_options: str) -> list[str]:
    """`python -m jobs_core worker` for tests/outbox/app.py's jobs and context, the backend's
    own worker options (`backend_options`) after `--`: the worker of every outbox test, on
    whichever backend its environment names."""
    return [
        sys.executable,
        "-m",
        "jobs_core",
        "worker",
        "tests.outbox.app:jobs",
        "--context",
        "tests.outbox.app:create_context",
        "--",
        *backend_options,
    ]


WORKER = worker_command("--threads", "8", "--worker-timeout", "100")
"""The Dramatiq worker of these tests (JOBS_BACKEND=dramatiq)."""


@pytest.fixture
def procs(redis_server: Any, store: Any) -> Iterator[WorkerProcesses]:
    with worker_processes(redis_server.url, store.url, QUEUE) as workers:
        yield workers


def relay_cli(procs: WorkerProcesses, url: str, *options: str) -> subprocess.Popen[bytes]:
    """`python -m jobs_core relay` for tests/outbox/app.py (JOBS_BACKEND=dramatiq)."""
    return procs.start(
        [
            sys.executable,
            "-m",
            "jobs_core",
            "relay",
            "tests.outbox.app:jobs",
            "--database-url",
            url,
            "--poll-interval",
            "0.1",
            *options,
        ]
    )


def relay_proc(procs: WorkerProcesses, url: str, *options: str) -> subprocess.Popen[bytes]:
    """The relay with its sends counted in the store (tests/outbox/procs.py)."""
    return procs.start([sys.executable, "-m", "tests.outbox.procs", "relay", url, *options])


def write(engine: Engine, numbers: range) -> None:
    with Session(engine) as session, session.begin():
        Outbox(engine).dispatcher(session).dispatch_many_sync([(charge, {"n": n}) for n in numbers])


def statuses(engine: Engine) -> dict[str, int]:
    return Outbox(engine).counts()


def all_ran_once(store: Any, numbers: range) -> bool:
    return runs(store.client()) == dict.fromkeys(numbers, 1)


def wait_all_ran(procs: WorkerProcesses, store: Any, numbers: range, timeout: float = 90) -> None:
    client = store.client()
    wait_for(
        lambda: set(runs(client)) >= set(numbers),
        timeout,
        f"jobs {numbers} to run",
        lambda: (
            f"ran {len(runs(client))}; "
            + " | ".join(procs.output(p)[-1500:] for p, _ in procs.procs)
        ),
    )


def assert_ran_once_and_no_more(
    procs: WorkerProcesses,
    store: Any,
    engine: Engine,
    numbers: range,
    failed: int = 0,
    drain: Callable[[], None] | None = None,
) -> None:
    """Every job ran exactly once, every row is marked sent, and nothing else runs after: once
    no row is pending nothing is sent again, and once the queue is drained (`drain`; by default
    Dramatiq's join) nothing sent is left to run, so the count read then is final."""
    client = store.client()
    wait_for(lambda: statuses(engine)["pending"] == 0, 30, "every row marked sent")
    if drain is None:
        drain_queue(procs.broker_url, QUEUE)
    else:
        drain()
    assert runs(client) == dict.fromkeys(numbers, 1), runs(client)
    assert statuses(engine) == {"pending": 0, "sent": len(numbers), "failed": failed}


# -- C31 -----------------------------------------------------------------------------------


def test_C31_rollback_sends_nothing_commit_runs_once(
    database_url: str, engine: Engine, procs: WorkerProcesses, store: Any
) -> None:
    with Session(engine) as session, session.begin():
        Outbox(engine).dispatcher(session).dispatch_many_sync(
            [(charge, {"n": n}) for n in range(100)]
        )
        session.rollback()
    write(engine, range(100, 200))
    procs.start(WORKER)
    relay_cli(procs, database_url)
    wait_all_ran(procs, store, range(100, 200))
    assert_ran_once_and_no_more(procs, store, engine, range(100, 200))


# -- C32 -----------------------------------------------------------------------------------


def test_C32_producer_sigkilled_after_commit_loses_nothing(
    database_url: str, engine: Engine, procs: WorkerProcesses, store: Any
) -> None:
    producer = procs.start(
        [sys.executable, "-m", "tests.outbox.procs", "produce", database_url, "0", "50"]
    )
    assert producer.wait(60) == -9, procs.output(producer)
    assert "committed" in procs.output(producer)
    assert statuses(engine)["pending"] == 50, "the rows outlived their producer"
    with engine.connect() as conn:
        orders = conn.execute(text("SELECT count(*) FROM orders")).scalar()
    assert orders == 50, "the business rows committed with them"
    procs.start(WORKER)
    relay_cli(procs, database_url)
    wait_all_ran(procs, store, range(50))
    assert_ran_once_and_no_more(procs, store, engine, range(50))


def test_C32_relay_sigkilled_between_sending_and_marking_resends_and_runs_once(
    database_url: str, engine: Engine, procs: WorkerProcesses, store: Any
) -> None:
    write(engine, range(300))
    dying = relay_proc(procs, database_url, "--kill-after-send", "--batch-size", "100")
    assert dying.wait(60) == -9, procs.output(dying)
    client = store.client()
    first_keys = [k.decode() for k in client.lrange(SENT_KEYS, 0, -1)]
    assert len(first_keys) == 100, "the backend accepted the first batch"
    assert statuses(engine)["pending"] == 300, "... and the relay died before marking it"

    procs.start(WORKER)
    wait_all_ran(procs, store, range(100))  # the batch sent before the kill runs
    relay_proc(procs, database_url, "--batch-size", "100")
    wait_all_ran(procs, store, range(300))
    assert_ran_once_and_no_more(procs, store, engine, range(300))
    sends = [k.decode() for k in client.lrange(SENT_KEYS, 0, -1)]
    assert len(sends) == 400 and sends[:100] == first_keys == sends[100:200], (
        "the killed batch was sent again with the same keys, and deduplicated by them"
    )


# -- C33 -----------------------------------------------------------------------------------


def test_C33_two_relays_on_5000_rows_send_each_exactly_once(
    database_url: str, engine: Engine, procs: WorkerProcesses, store: Any
) -> None:
    total = 5000
    for first in range(0, total, 1000):
        write(engine, range(first, first + 1000))
    procs.start(WORKER)
    relays = [relay_proc(procs, database_url, "--batch-size", "100") for _ in range(2)]
    wait_all_ran(procs, store, range(total), timeout=180)
    assert_ran_once_and_no_more(procs, store, engine, range(total))
    sends = [k.decode() for k in store.client().lrange(SENT_KEYS, 0, -1)]
    assert len(sends) == total and len(set(sends)) == total, "no row was sent twice"
    sent_by = {int(pid): int(n) for pid, n in store.client().hgetall(SENT_BY).items()}
    outputs = [procs.output(r) for r in relays]
    if engine.dialect.name == "postgresql":
        assert sorted(sent_by) == sorted(r.pid for r in relays), f"both relays sent: {sent_by}"
        assert all("is NOT relaying" not in out for out in outputs)
    else:
        assert len(sent_by) == 1, f"SQLite: one relay at a time: {sent_by}"
        standing_by = [out for out in outputs if "is NOT relaying" in out]
        assert len(standing_by) == 1, "SQLite: the second relay says it stands by"
        assert "cannot lock rows" in standing_by[0]


def test_C33_a_poison_row_does_not_block_the_queue(
    database_url: str, engine: Engine, procs: WorkerProcesses, store: Any
) -> None:
    write(engine, range(10))
    now = datetime.now(timezone.utc)
    poison = [("outbox.removed", {"n": 100}, "poison-unknown"), ("outbox.charge", {}, "poison-bad")]
    with engine.begin() as conn:
        conn.execute(
            insert(outbox_table),
            [
                {
                    "key": key,
                    "job_name": name,
                    "payload": payload,
                    "status": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "available_at": now,
                }
                for name, payload, key in poison
            ],
        )
    write(engine, range(10, 20))
    procs.start(WORKER)
    relay = relay_cli(procs, database_url)
    wait_all_ran(procs, store, range(20))
    assert_ran_once_and_no_more(procs, store, engine, range(20), failed=2)
    with engine.connect() as conn:
        failed = dict(
            conn.execute(
                select(outbox_table.c.key, outbox_table.c.last_error).where(
                    outbox_table.c.status == "failed"
                )
            ).all()
        )
    assert "unknown job 'outbox.removed'" in failed["poison-unknown"]
    assert "n: Field required" in failed["poison-bad"]
    output = procs.output(relay)
    assert "poison-unknown" in output and "poison-bad" in output, "logged with the row's key"


def test_C33_backend_down_delays_then_delivers_everything(
    database_url: str, engine: Engine, redis_server: Any, procs: WorkerProcesses, store: Any
) -> None:
    procs.start(WORKER)
    relay = relay_cli(procs, database_url)
    write(engine, range(100))
    wait_all_ran(procs, store, range(100))

    redis_server.stop()
    write(engine, range(100, 300))
    # The rows wait while the broker is down: shown by the relay's own rounds, not by a clock.
    # Once three rounds have failed (each row's `attempts` counts them), with the relay backing
    # off between them, every row is still pending: none failed, none lost.
    wait_for(lambda: max_attempts(engine) >= 3, 30, "three failed rounds of the relay")
    assert statuses(engine)["pending"] == 200, "the rows wait; none is failed or lost"
    redis_server.start()

    wait_all_ran(procs, store, range(300), timeout=120)
    assert_ran_once_and_no_more(procs, store, engine, range(300))
    output = procs.output(relay)
    assert output.count("next round in") >= 3, "the relay said it backs off, each round"


def max_attempts(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.max(outbox_table.c.attempts))).scalar() or 0)
