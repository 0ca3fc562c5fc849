"""The steps of runs in a SQL database through SQLAlchemy (PostgreSQL, SQLite, and others):
one row per record in `jobs_steps`, the table the Django app declares too.

A delivery reads its run's rows once; a completed step is one `INSERT ... ON CONFLICT DO
NOTHING` (the first writer's row stays; a writer that lost reads it back). When the run ends its
rows get an expiry, and expired rows are deleted as later runs end (at most once a minute).
Create the table with `create_table()`, or with Alembic: `target_metadata = [...,
jobs_core.steps.sql_store.metadata]`.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from ..outbox.tables import UTCDateTime
from .store import PURGE_EVERY

STEPS_TABLE = "jobs_steps"

metadata = MetaData()
"""The steps table, for Alembic's `target_metadata`."""

steps_table = Table(
    STEPS_TABLE,
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("run_id", String(64), nullable=False),
    Column("key", String(255), nullable=False),
    Column("value", Text, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    UniqueConstraint("run_id", "key", name="jobs_steps_run_key"),
    Index("jobs_steps_expires_idx", "expires_at"),
)
"""One row per record of a run with steps (`jobs_core.steps.engine` chooses the keys)."""

_t = steps_table
_UPSERT_DIALECTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


class SqlStepStore:
    """`StepStore` on a SQLAlchemy `Engine` (sync: workers call it from their threads); the
    outbox's engine does, or one made from `JOBS_STEP_STORE_URL`."""

    def __init__(self, engine: Engine) -> None:
        if not isinstance(engine, Engine):
            raise TypeError(
                f"SqlStepStore needs a sync SQLAlchemy Engine (workers run steps in threads), "
                f"got {engine!r}"
            )
        self.engine = engine
        self._auto = engine.execution_options(isolation_level="AUTOCOMMIT")
        """Each record is one statement: no BEGIN and COMMIT around it (one round trip)."""
        self._insert = _UPSERT_DIALECTS.get(engine.dialect.name)
        self._purged = 0.0
        # Built once, values bound at execution: SQLAlchemy compiles each of them once.
        self._load = select(_t.c.key, _t.c.value).where(_t.c.run_id == bindparam("run_id"))
        self._kept = select(_t.c.value).where(
            _t.c.run_id == bindparam("run_id"), _t.c.key == bindparam("key")
        )
        self._add = (
            None
            if self._insert is None
            else self._insert(_t).on_conflict_do_nothing().returning(_t.c.id)
        )

    def create_table(self) -> None:
        """Create the steps table if it does not exist."""
        metadata.create_all(self.engine)

    def load(self, run_id: str) -> dict[str, str]:
        with self._auto.connect() as conn:
            rows = conn.execute(self._load, {"run_id": run_id})
            return {key: value for key, value in rows}

    def save(self, run_id: str, key: str, value: str) -> str:
        row = {"run_id": run_id, "key": key, "value": value}
        with self._auto.connect() as conn:
            if self._add is not None:  # INSERT ... ON CONFLICT DO NOTHING
                inserted = conn.execute(self._add, row).first() is not None
            else:
                try:
                    conn.execute(_t.insert(), row)
                    inserted = True
                except IntegrityError:
                    inserted = False
            if inserted:
                return value
            kept = conn.execute(self._kept, {"run_id": run_id, "key": key})
            return str(kept.scalar_one())  # another delivery kept it first: its value stands

    def put(self, run_id: str, key: str, value: str) -> None:
        row = {"run_id": run_id, "key": key, "value": value}
        if self._insert is not None:
            query = (
                self._insert(_t)
                .values(row)
                .on_conflict_do_update(
                    index_elements=[_t.c.run_id, _t.c.key], set_={"value": value}
                )
            )
            with self._auto.connect() as conn:
                conn.execute(query)
            return
        with self.engine.begin() as conn:
            where = (_t.c.run_id == run_id) & (_t.c.key == key)
            if not conn.execute(update(_t).where(where).values(value=value)).rowcount:
                conn.execute(_t.insert().values(row))

    def finish(self, run_id: str, retention: timedelta) -> None:
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            conn.execute(update(_t).where(_t.c.run_id == run_id).values(expires_at=now + retention))
            if time.monotonic() - self._purged >= PURGE_EVERY:
                self._purged = time.monotonic()
                conn.execute(delete(_t).where(_t.c.expires_at < now))

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"SqlStepStore({self.engine!r})"
