"""The transactional outbox: dispatch in the database transaction, send after it commits.

`Outbox(engine).dispatcher(session)` is a `JobDispatcherPort` that writes each dispatch as a
row in the session's transaction; a relay (`Outbox.relay(...)`, or `python -m jobs_core relay`)
sends the committed rows through the configured backend. A rollback sends nothing; a crash after
the commit loses nothing (C31–C33). Needs the `sqlalchemy` extra; the Django app
`jobs_core.contrib.django` has the same outbox as a model.
"""

from __future__ import annotations

from ..config import missing_extra

try:
    import sqlalchemy  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised with the extra missing
    raise missing_extra("outbox", "sqlalchemy", getattr(_exc, "name", None) or str(_exc)) from _exc

from .outbox import Outbox, SessionOutboxDispatcher
from .relay import Backoff, PendingRow, Relay, RoundReport, RowResult
from .tables import lease_table, metadata, outbox_table
from .writer import BACKEND, FAILED, PENDING, SENT, OutboxMessage, OutboxWriter

__all__ = [
    "BACKEND",
    "FAILED",
    "PENDING",
    "SENT",
    "Backoff",
    "Outbox",
    "OutboxMessage",
    "OutboxWriter",
    "PendingRow",
    "Relay",
    "RoundReport",
    "RowResult",
    "SessionOutboxDispatcher",
    "lease_table",
    "metadata",
    "outbox_table",
]
