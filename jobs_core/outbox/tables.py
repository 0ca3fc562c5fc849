"""The outbox tables as SQLAlchemy Core objects: include `metadata` in Alembic's target metadata.

The Django app (`jobs_core.contrib.django`) declares the same tables and columns, so either
relay can read what either side wrote.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

OUTBOX_TABLE = "jobs_outbox"
LEASE_TABLE = "jobs_outbox_relay"

_NAIVE_DIALECTS = {"sqlite", "mysql", "mariadb"}


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime everywhere, also on databases that store naive ones (SQLite)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"outbox times must be timezone-aware, got {value!r}")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name in _NAIVE_DIALECTS else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        found = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        if found.tzinfo is None:
            return found.replace(tzinfo=timezone.utc)
        return found.astimezone(timezone.utc)


metadata = MetaData()
"""The outbox's tables: `target_metadata = [Base.metadata, jobs_core.outbox.metadata]` in
Alembic's env.py makes autogenerate create them."""

_PENDING = text("status = 'pending'")

outbox_table = Table(
    OUTBOX_TABLE,
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("key", String(36), nullable=False, unique=True),
    Column("job_name", Text, nullable=False),
    Column("payload", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Column("run_at", UTCDateTime, nullable=True),
    Column("idempotency_key", Text, nullable=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("available_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("dispatch_id", Text, nullable=True),
    # What hooks (tracing) added in the writing transaction; the relay sends it on (added in
    # 0.2: an existing table gets it with `ALTER TABLE jobs_outbox ADD COLUMN headers JSON`).
    Column("headers", JSON().with_variant(JSONB(), "postgresql"), nullable=True),
    # Only pending rows are ever searched for, in id order: a small partial index.
    Index("jobs_outbox_pending_idx", "id", postgresql_where=_PENDING, sqlite_where=_PENDING),
    Index("jobs_outbox_status_idx", "status", "sent_at"),
)
"""One row per dispatch: `pending` until the relay sends it (`sent`) or gives up (`failed`)."""

lease_table = Table(
    LEASE_TABLE,
    metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", Text, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)
"""Which relay may send, on databases that cannot lock rows (SQLite): one row, `relay`."""
