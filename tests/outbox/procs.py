"""Processes the end-to-end outbox tests start (and SIGKILL).

    python -m tests.outbox.procs produce URL FIRST COUNT   # commit COUNT rows, then SIGKILL itself
    python -m tests.outbox.procs relay URL [--kill-after-send | --kill-before-publish] [--batch-size N]

`relay` is `python -m jobs_core relay` with the configured backend's dispatcher wrapped (through
the public port only) so that every batch the backend accepted is counted in the store Redis
(`SENT_KEYS`), and, with `--kill-after-send`, the process SIGKILLs itself right after the
backend accepted its first batch: before the relay marks the rows sent. With
`--kill-before-publish` it SIGKILLs itself once its dispatcher has claimed the idempotency keys
of its first batch, before anything is published.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert
from sqlalchemy.orm import Session

from jobs_core import create_dispatcher
from jobs_core.outbox import Outbox
from jobs_core.outbox.relay import serve
from tests.outbox.app import charge, jobs

SENT_KEYS = "outbox:sent-keys"
"""A list: the idempotency key of every row a relay handed to the backend, once per send."""
SENT_BY = "outbox:sent-by"
"""A hash: relay process id -> rows it sent."""

app_metadata = MetaData()
orders = Table("orders", app_metadata, Column("n", Integer, primary_key=True))
"""The application's own table, written in the same transaction as the outbox rows."""


def produce(url: str, first: int, count: int) -> None:
    engine = create_engine(url)
    app_metadata.create_all(engine)
    numbers = range(first, first + count)
    with Session(engine) as session, session.begin():
        session.execute(insert(orders), [{"n": n} for n in numbers])
        Outbox(engine).dispatcher(session).dispatch_many_sync([(charge, {"n": n}) for n in numbers])
    print("committed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # dies after the commit, before any relay ran


class CountingDispatcher:
    """The configured dispatcher, counting each send in the store (and maybe dying after it)."""

    def __init__(self, inner: Any, store: redis.Redis, kill_after_send: bool) -> None:
        self.inner = inner
        self.store = store
        self.kill_after_send = kill_after_send

    def dispatch_many_sync(self, items: Iterable[Any], **options: Any) -> Any:
        items = list(items)
        receipts = self.inner.dispatch_many_sync(items, **options)
        self.store.rpush(SENT_KEYS, *[item.idempotency_key for item in items])
        self.store.hincrby(SENT_BY, str(os.getpid()), len(items))
        if self.kill_after_send:
            print(f"sent {len(items)}, dying before marking them", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return receipts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def die_before_publishing(dispatcher: Any) -> None:
    """Have `dispatcher` die (SIGKILL) when it is about to hand its first jobs to the backend:
    after the core claimed their keys, before the publish."""

    def send(jobs: Any) -> Any:
        print(f"claimed {len(jobs)}, dying before publishing them", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    dispatcher._send = send


def relay(url: str, kill_after_send: bool, batch_size: int, kill_before_publish: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(process)d %(levelname)s %(message)s")
    store = redis.Redis.from_url(os.environ["DURABILITY_REDIS_URL"])
    inner = create_dispatcher()
    if kill_before_publish:
        die_before_publishing(inner)
    dispatcher = CountingDispatcher(inner, store, kill_after_send)
    engine = create_engine(url)
    outbox_relay = Outbox(engine).relay(
        dispatcher,  # type: ignore[arg-type]
        jobs,
        batch_size=batch_size,
        poll_interval=0.1,
        lease_ttl=timedelta(seconds=5),
    )
    print(f"relay {outbox_relay.owner} started", flush=True)
    serve(outbox_relay)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    p.add_argument("url")
    p.add_argument("first", type=int)
    p.add_argument("count", type=int)
    r = sub.add_parser("relay")
    r.add_argument("url")
    r.add_argument("--kill-after-send", action="store_true")
    r.add_argument("--kill-before-publish", action="store_true")
    r.add_argument("--batch-size", type=int, default=200)
    args = parser.parse_args(argv)
    if args.command == "produce":
        produce(args.url, args.first, args.count)
    else:
        relay(args.url, args.kill_after_send, args.batch_size, args.kill_before_publish)


if __name__ == "__main__":
    main(sys.argv[1:])
