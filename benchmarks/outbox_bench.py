"""The outbox's cost (issue 16), as rows of `python -m benchmarks --only outbox`.

Backend: Dramatiq on the run's `redis-server` (no worker: the messages are counted, then
dropped). Databases: a SQLite file, and (in a full run) PostgreSQL where
tests/support/postgres_server.py can provide one (`JOBS_TEST_POSTGRES_URL`, or the server
binaries).

- `outbox.relay.<db>`: N committed rows sent by `Relay.run_once` (batches of 500, each row with
  its own idempotency key, marked sent in the database) against
  `DramatiqDispatcher.dispatch_many_sync` of the same N jobs in batches of 500 without keys
  (what an app does without the outbox); `outbox.relay.keys.<db>` against the same with keys
  (the relay's Redis work, without the database).
- `outbox.write.<db>`: one transaction per job (a web request creating an order), with and
  without the outbox row written in it: the µs the outbox adds to the caller, per job.

Both sides of each comparison run in the same run, interleaved round by round.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, delete, insert
from sqlalchemy.orm import Session

from jobs_core import JobRegistry, JobRequest
from jobs_core.backends.dramatiq import DramatiqDispatcher
from jobs_core.outbox import Outbox, outbox_table

from .config import Config
from .results import Row, compare, micros_beside
from .scenario import Env
from .timing import interleave

BATCH = 500

jobs = JobRegistry[Any]()


class Charge(BaseModel):
    order_id: int
    amount_cents: int
    currency: str = "EUR"


@jobs.job("bench.charge")
def charge(payload: Charge, ctx: Any) -> None:
    """Never run here: the benchmark measures sending, not running."""


app_metadata = MetaData()
orders = Table(
    "bench_orders",
    app_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("amount_cents", Integer, nullable=False),
)


def _with_postgres(config: Config) -> bool:
    """Whether a full run measures PostgreSQL too (a server URL or binaries to start one)."""
    from tests.support.postgres_server import URL_ENV, find_bindir

    return not config.quick and bool(os.environ.get(URL_ENV) or find_bindir())


def rows(config: Config) -> list[str]:
    names = ["sqlite", *(["postgresql"] if _with_postgres(config) else [])]
    return [f"outbox.{what}.{db}" for db in names for what in ("relay", "relay.keys", "write")]


@contextmanager
def databases(config: Config) -> Iterator[list[tuple[str, str]]]:
    from tests.support.postgres_server import Postgres

    found: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        found.append(("sqlite", f"sqlite:///{tmp}/bench.db"))
        pg = Postgres() if _with_postgres(config) else None
        try:
            if pg is not None:
                found.append(("postgresql", pg.new_database()))
            yield found
        finally:
            if pg is not None:
                pg.close()


def _payload(i: int) -> dict[str, Any]:
    return {"order_id": i, "amount_cents": 1000 + i}


def relay_rows(env: Env, db: str, url: str) -> list[Row]:
    import redis

    config, n = env.config, env.config.small_n
    engine = create_engine(url)
    outbox = Outbox(engine)
    outbox.create_table()
    queue = f"bench-outbox-{uuid.uuid4().hex[:8]}"
    dispatcher = DramatiqDispatcher(env.redis_url, queue)
    client = redis.Redis.from_url(env.redis_url)
    relay = outbox.relay(dispatcher, jobs, batch_size=BATCH, keep_sent=None)
    runs = iter(range(10**9))

    def drop_messages() -> None:
        client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.msgs")

    def relay_side(count: int) -> float:
        with Session(engine) as session, session.begin():
            writer = outbox.dispatcher(session)
            for first in range(0, count, BATCH):
                writer.dispatch_many_sync(
                    [(charge, _payload(i)) for i in range(first, min(count, first + BATCH))]
                )
        start = time.perf_counter()
        sent = 0
        while sent < count:
            sent += relay.run_once()
        elapsed = time.perf_counter() - start
        with engine.begin() as conn:
            conn.execute(delete(outbox_table))
        drop_messages()
        return elapsed

    def direct_side(keys: bool) -> Callable[[int], float]:
        def side(count: int) -> float:
            run = next(runs)
            items = [
                JobRequest(
                    charge, _payload(i), idempotency_key=f"direct:{run}:{i}" if keys else None
                )
                for i in range(count)
            ]
            start = time.perf_counter()
            for first in range(0, count, BATCH):
                dispatcher.dispatch_many_sync(items[first : first + BATCH])
            elapsed = time.perf_counter() - start
            drop_messages()
            return elapsed

        return side

    env.log(f"outbox: {db} relay, {n:,} rows x {config.rounds}")
    try:
        timings = interleave(
            {"relay": relay_side, "direct": direct_side(False), "keys": direct_side(True)},
            n,
            config.rounds,
            warmup_n=min(BATCH, n),
            progress=env.log,
        )
    finally:
        dispatcher.close()
        client.close()
        engine.dispose()
    what = f"rows/s sent by Relay.run_once from {db} (batches of {BATCH}, marked sent)"
    return [
        compare(
            f"outbox.relay.{db}",
            f"{what} vs DramatiqDispatcher.dispatch_many_sync of the same jobs without keys",
            timings,
            "relay",
            "direct",
            labels=("", "dispatch_many"),
        ),
        compare(
            f"outbox.relay.keys.{db}",
            f"{what} vs dispatch_many_sync of the same jobs with a key each (the relay's Redis "
            "work without the database)",
            timings,
            "relay",
            "keys",
            labels=("", "dispatch_many+keys"),
        ),
    ]


def write_row(env: Env, db: str, url: str) -> Row:
    config, n = env.config, env.config.small_n // 5
    engine = create_engine(url)
    outbox = Outbox(engine)
    outbox.create_table()
    app_metadata.create_all(engine)

    def transactions(with_outbox: bool) -> Callable[[int], float]:
        def side(count: int) -> float:
            start = time.perf_counter()
            for i in range(count):
                with Session(engine) as session, session.begin():
                    session.execute(insert(orders).values(amount_cents=1000 + i))
                    if with_outbox:
                        outbox.dispatcher(session).dispatch_sync(charge, _payload(i))
            elapsed = time.perf_counter() - start
            with engine.begin() as conn:
                conn.execute(delete(orders))
                conn.execute(delete(outbox_table))
            return elapsed

        return side

    env.log(f"outbox: {db} write cost, {n:,} transactions x {config.rounds}")
    try:
        timings = interleave(
            {"with_outbox": transactions(True), "without": transactions(False)},
            n,
            config.rounds,
            warmup_n=min(50, n),
            slices=2,
            progress=env.log,
        )
    finally:
        engine.dispose()
    per_job = {side: [s / n * 1e6 for s in timings.seconds[side]] for side in timings.seconds}
    added = [w - o for w, o in zip(per_job["with_outbox"], per_job["without"])]
    return micros_beside(
        added,
        f"outbox.write.{db}",
        f"wall µs one transaction (insert an order) takes with the outbox row written in it, "
        f"minus without ({db}): what the outbox adds to the caller per job",
        n,
        {
            "with_outbox": ("with outbox", per_job["with_outbox"]),
            "without": ("without", per_job["without"]),
        },
    )


def run(env: Env) -> list[Row]:
    rows: list[Row] = []
    with databases(env.config) as found:
        for db, url in found:
            rows += relay_rows(env, db, url)
            rows.append(write_row(env, db, url))
    return rows


if __name__ == "__main__":
    from .__main__ import main

    sys.exit(main(["--only", "outbox", *sys.argv[1:]]))
