"""The outbox's cost: relay throughput against direct `dispatch_many`, and the write it adds to
the caller's transaction.

    python -m benchmarks.outbox_bench [--quick] [--rounds N] [--json PATH]

Backend: Dramatiq on a private `redis-server` (no worker: the messages are counted, then
dropped). Databases: a SQLite file, and PostgreSQL where tests/support/postgres_server.py can
provide one (`JOBS_TEST_POSTGRES_URL`, or the server binaries).

- relay: N committed rows sent by `Relay.run_once` (batches of 500, each row with its own
  idempotency key, marked sent in the database) against `DramatiqDispatcher.dispatch_many_sync`
  of the same N jobs in batches of 500, without keys (what an app does today), and with keys
  (the same Redis work as the relay, without the database). Ratio: relay rows/s over direct.
- write cost: one transaction per job (a web request creating an order), with and without the
  outbox row written in it; the difference is what the outbox adds to the caller, per job.

Both sides of each comparison run in the same run, interleaved round by round (see
`benchmarks.timing.interleave`); figures are medians.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, delete, insert
from sqlalchemy.orm import Session

from jobs_core import JobRegistry, JobRequest
from jobs_core.backends.dramatiq import DramatiqDispatcher
from jobs_core.outbox import Outbox, outbox_table

from .timing import interleave, median, paired_ratio

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


@contextmanager
def databases() -> Iterator[list[tuple[str, str]]]:
    import tempfile

    from tests.support.postgres_server import Postgres, PostgresUnavailable

    found: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        found.append(("sqlite", f"sqlite:///{tmp}/bench.db"))
        pg: Postgres | None = None
        try:
            pg = Postgres()
            found.append(("postgresql", pg.new_database()))
        except PostgresUnavailable as exc:
            print(f"(no PostgreSQL: {exc})", file=sys.stderr)
        try:
            yield found
        finally:
            if pg is not None:
                pg.close()


def _payload(i: int) -> dict[str, Any]:
    return {"order_id": i, "amount_cents": 1000 + i}


def relay_scenario(url: str, redis_url: str, n: int, rounds: int) -> dict[str, float]:
    import redis

    engine = create_engine(url)
    outbox = Outbox(engine)
    outbox.create_table()
    queue = f"bench-outbox-{uuid.uuid4().hex[:8]}"
    dispatcher = DramatiqDispatcher(redis_url, queue)
    client = redis.Redis.from_url(redis_url)
    relay = outbox.relay(dispatcher, jobs, batch_size=BATCH, keep_sent=None)
    counter = iter(range(10**9))

    def drop_messages() -> None:
        client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.msgs")

    def relay_side(count: int) -> float:
        import time

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
            import time

            run = next(counter)
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

    try:
        timings = interleave(
            {"relay": relay_side, "direct": direct_side(False), "direct_keys": direct_side(True)},
            n,
            rounds,
            warmup_n=BATCH,
        )
    finally:
        dispatcher.close()
        engine.dispose()
    rate = {name: median([n / s for s in secs]) for name, secs in timings.seconds.items()}
    per_round = {name: [n / s for s in secs] for name, secs in timings.seconds.items()}
    return {
        "relay_rows_per_s": rate["relay"],
        "direct_jobs_per_s": rate["direct"],
        "direct_keys_jobs_per_s": rate["direct_keys"],
        "relay_vs_direct": paired_ratio(per_round["relay"], per_round["direct"]),
        "relay_vs_direct_keys": paired_ratio(per_round["relay"], per_round["direct_keys"]),
    }


def write_cost_scenario(url: str, n: int, rounds: int) -> dict[str, float]:
    engine = create_engine(url)
    outbox = Outbox(engine)
    outbox.create_table()
    app_metadata.create_all(engine)

    def transactions(with_outbox: bool) -> Callable[[int], float]:
        def side(count: int) -> float:
            import time

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

    try:
        timings = interleave(
            {"with_outbox": transactions(True), "without": transactions(False)},
            n,
            rounds,
            warmup_n=50,
            slices=2,
        )
    finally:
        engine.dispose()
    us = {name: median(secs) / n * 1e6 for name, secs in timings.seconds.items()}
    return {
        "transaction_us_without": us["without"],
        "transaction_us_with_outbox": us["with_outbox"],
        "added_us_per_job": us["with_outbox"] - us["without"],
        "with_vs_without": paired_ratio(timings.seconds["with_outbox"], timings.seconds["without"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.outbox_bench")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    relay_n, tx_n = (1_000, 200) if args.quick else (5_000, 1_000)

    from tests.support.redis_server import RedisServer

    results: dict[str, dict[str, float]] = {}
    with RedisServer() as server, databases() as found:
        for name, url in found:
            print(f"== {name}: relay {relay_n} rows x {rounds} rounds", flush=True)
            relay = relay_scenario(url, server.url, relay_n, rounds)
            print(f"== {name}: write cost {tx_n} transactions x {rounds} rounds", flush=True)
            cost = write_cost_scenario(url, tx_n, rounds)
            results[name] = {**relay, **cost}
    print()
    print(
        "| database | relay rows/s | direct dispatch_many jobs/s | relay / direct | relay / direct with keys | transaction without outbox | with outbox | added per job |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['relay_rows_per_s']:,.0f} | {r['direct_jobs_per_s']:,.0f} "
            f"| {r['relay_vs_direct']:.2f} | {r['relay_vs_direct_keys']:.2f} "
            f"| {r['transaction_us_without']:,.0f} µs | {r['transaction_us_with_outbox']:,.0f} µs "
            f"| {r['added_us_per_job']:,.0f} µs ({r['with_vs_without']:.2f}x) |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
