"""The relay's view of the outbox tables through SQLAlchemy (sync and async engines).

On PostgreSQL (and the other databases that have it) a round claims rows with
`SELECT ... FOR UPDATE SKIP LOCKED` and writes their outcome in the same transaction, so several
relays share the work and none sends a row another holds (C33). SQLite cannot lock rows: a round
reads in one short transaction and writes the outcome in another (never holding SQLite's write
lock while it sends, which would stall the application's own writes), and the relay lease keeps
the other relays standing by.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .relay import PendingRow, RowResult
from .tables import lease_table, outbox_table
from .writer import FAILED, PENDING, SENT, utcnow

LEASE_NAME = "relay"
_CHUNK = 500
"""Rows per UPDATE when marking rows sent (two bound parameters each, well under SQLite's
limit of 32,766)."""
_ROW_LOCK_DIALECTS = {"postgresql", "mysql", "mariadb", "oracle"}

_t = outbox_table
_l = lease_table


def _pending_row(row: Any) -> PendingRow:
    return PendingRow(
        id=row.id,
        key=row.key,
        job_name=row.job_name,
        payload=row.payload,
        run_at=row.run_at,
        idempotency_key=row.idempotency_key,
        attempts=row.attempts,
        headers=row.headers,
    )


def select_pending(conn: Connection, limit: int, lock: bool) -> list[PendingRow]:
    query = (
        select(
            _t.c.id,
            _t.c.key,
            _t.c.job_name,
            _t.c.payload,
            _t.c.run_at,
            _t.c.idempotency_key,
            _t.c.attempts,
            _t.c.headers,
        )
        .where(_t.c.status == PENDING, _t.c.available_at <= utcnow())
        .order_by(_t.c.id)
        .limit(limit)
    )
    if lock:
        query = query.with_for_update(skip_locked=True)
    return [_pending_row(row) for row in conn.execute(query)]


_MARK_FAILED = (
    update(_t)
    .where(_t.c.id == bindparam("row_id"), _t.c.status == PENDING)
    .values(
        status=FAILED,
        attempts=_t.c.attempts + 1,
        last_error=bindparam("error", type_=_t.c.last_error.type),
    )
)
_MARK_RETRY = (
    update(_t)
    .where(_t.c.id == bindparam("row_id"), _t.c.status == PENDING)
    .values(
        attempts=_t.c.attempts + 1,
        last_error=bindparam("error", type_=_t.c.last_error.type),
        available_at=func.coalesce(
            bindparam("until", type_=_t.c.available_at.type), _t.c.available_at
        ),
    )
)


def apply_results(conn: Connection, results: Sequence[RowResult]) -> None:
    """Write each row's outcome: one UPDATE per chunk of sent rows, one executemany per other
    kind of outcome (rare)."""
    now = utcnow()
    sent = [r for r in results if r.outcome == "sent"]
    for first in range(0, len(sent), _CHUNK):
        chunk = sent[first : first + _CHUNK]
        conn.execute(
            update(_t)
            .where(_t.c.id.in_([r.row.id for r in chunk]), _t.c.status == PENDING)
            .values(
                status=SENT,
                sent_at=now,
                last_error=None,
                dispatch_id=case({r.row.id: r.dispatch_id for r in chunk}, value=_t.c.id),
            )
        )
    failed = [{"row_id": r.row.id, "error": r.error} for r in results if r.outcome == "failed"]
    retry = [
        {"row_id": r.row.id, "error": r.error, "until": r.available_at}
        for r in results
        if r.outcome == "retry"
    ]
    for statement, params in ((_MARK_FAILED, failed), (_MARK_RETRY, retry)):
        if params:
            conn.execute(statement, params)


def renew_lease(conn: Connection, owner: str, ttl: timedelta) -> str | None:
    """Take or renew the lease in one statement; None if `owner` holds it now."""
    now = utcnow()
    taken = conn.execute(
        update(_l)
        .where(_l.c.name == LEASE_NAME, or_(_l.c.owner == owner, _l.c.expires_at < now))
        .values(owner=owner, expires_at=now + ttl)
    )
    if taken.rowcount == 1:
        return None
    holder = conn.execute(select(_l.c.owner).where(_l.c.name == LEASE_NAME)).scalar()
    return holder if holder is not None else ""


def insert_lease(conn: Connection, owner: str, ttl: timedelta) -> None:
    conn.execute(insert(_l).values(name=LEASE_NAME, owner=owner, expires_at=utcnow() + ttl))


def drop_lease(conn: Connection, owner: str) -> None:
    conn.execute(delete(_l).where(_l.c.name == LEASE_NAME, _l.c.owner == owner))


def purge_sent(conn: Connection, before: datetime) -> int:
    return conn.execute(delete(_t).where(_t.c.status == SENT, _t.c.sent_at < before)).rowcount


def requeue_failed(conn: Connection, ids: Sequence[int] | None) -> int:
    statement = update(_t).where(_t.c.status == FAILED)
    if ids is not None:
        statement = statement.where(_t.c.id.in_(list(ids)))
    return conn.execute(
        statement.values(status=PENDING, attempts=0, available_at=utcnow())
    ).rowcount


def counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(_t.c.status, func.count()).group_by(_t.c.status))
    found = {status: int(n) for status, n in rows}
    return {status: found.get(status, 0) for status in (PENDING, SENT, FAILED)}


def locks_rows(dialect_name: str) -> bool:
    return dialect_name in _ROW_LOCK_DIALECTS


@dataclass
class _Claim:
    rows: list[PendingRow]
    conn: Connection | None = None
    store: SqlAlchemyStore | None = None
    recorded: list[RowResult] = field(default_factory=list)

    def record(self, results: Sequence[RowResult]) -> None:
        if self.conn is not None:
            apply_results(self.conn, results)
        elif self.store is not None:
            with self.store.engine.begin() as conn:
                apply_results(conn, results)


class SqlAlchemyStore:
    """The outbox tables behind a sync `Engine`, for `Relay`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.locks_rows = locks_rows(engine.dialect.name)

    @contextmanager
    def claim(self, limit: int) -> Iterator[_Claim]:
        if self.locks_rows:
            with self.engine.begin() as conn:
                yield _Claim(select_pending(conn, limit, lock=True), conn=conn)
            return
        with self.engine.connect() as conn:
            rows = select_pending(conn, limit, lock=False)
        yield _Claim(rows, store=self)

    def take_lease(self, owner: str, ttl: timedelta) -> str | None:
        with self.engine.begin() as conn:
            holder = renew_lease(conn, owner, ttl)
        if holder != "":
            return holder
        try:
            with self.engine.begin() as conn:
                insert_lease(conn, owner, ttl)
        except IntegrityError:
            return "another relay (it took the lease just now)"
        return None

    def release_lease(self, owner: str) -> None:
        with self.engine.begin() as conn:
            drop_lease(conn, owner)

    def purge_sent(self, before: datetime) -> int:
        with self.engine.begin() as conn:
            return purge_sent(conn, before)

    def requeue_failed(self, ids: Sequence[int] | None = None) -> int:
        with self.engine.begin() as conn:
            return requeue_failed(conn, ids)

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return counts(conn)


@dataclass
class _AsyncClaim:
    rows: list[PendingRow]
    record_with: Any

    async def record(self, results: Sequence[RowResult]) -> None:
        await self.record_with(results)


class AsyncSqlAlchemyStore:
    """The outbox tables behind an `AsyncEngine` (asyncpg, aiosqlite, psycopg async)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.locks_rows = locks_rows(engine.dialect.name)

    @asynccontextmanager
    async def claim(self, limit: int) -> AsyncIterator[_AsyncClaim]:
        if self.locks_rows:
            async with self.engine.begin() as conn:
                rows = await conn.run_sync(select_pending, limit, True)

                async def record(results: Sequence[RowResult]) -> None:
                    await conn.run_sync(apply_results, results)

                yield _AsyncClaim(rows, record)
            return
        async with self.engine.connect() as conn:
            rows = await conn.run_sync(select_pending, limit, False)

        async def record_apart(results: Sequence[RowResult]) -> None:
            async with self.engine.begin() as conn:
                await conn.run_sync(apply_results, results)

        yield _AsyncClaim(rows, record_apart)

    async def take_lease(self, owner: str, ttl: timedelta) -> str | None:
        async with self.engine.begin() as conn:
            holder = await conn.run_sync(renew_lease, owner, ttl)
        if holder != "":
            return holder
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(insert_lease, owner, ttl)
        except IntegrityError:
            return "another relay (it took the lease just now)"
        return None

    async def release_lease(self, owner: str) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(drop_lease, owner)

    async def purge_sent(self, before: datetime) -> int:
        async with self.engine.begin() as conn:
            return await conn.run_sync(purge_sent, before)

    async def requeue_failed(self, ids: Sequence[int] | None = None) -> int:
        async with self.engine.begin() as conn:
            return await conn.run_sync(requeue_failed, ids)

    async def counts(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            return await conn.run_sync(counts)
