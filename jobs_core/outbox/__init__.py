"""The transactional outbox: dispatch in the database transaction, send after it commits.

`Outbox(engine).dispatcher(session)` is a `JobDispatcherPort` that writes each dispatch as a
row in the session's transaction; a relay (`Outbox.relay(...)`, or `python -m jobs_core relay`)
sends the committed rows through the configured backend. A rollback sends nothing; a crash after
the commit loses nothing (C31–C33).

`Outbox` and the tables need the `sqlalchemy` extra, and are imported on first use; the rest
(the relay, the row writer) is shared with the Django app `jobs_core.contrib.django`, which has
the same outbox as a model and needs no SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .relay import Backoff, PendingRow, Relay, RoundReport, RowResult
from .writer import BACKEND, FAILED, PENDING, SENT, OutboxMessage, OutboxWriter

if TYPE_CHECKING:
    from .outbox import Outbox, SessionOutboxDispatcher
    from .tables import lease_table, metadata, outbox_table

_NEEDS_SQLALCHEMY = {
    "Outbox": ".outbox",
    "SessionOutboxDispatcher": ".outbox",
    "lease_table": ".tables",
    "metadata": ".tables",
    "outbox_table": ".tables",
}


def __getattr__(name: str) -> Any:
    module = _NEEDS_SQLALCHEMY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module, __name__), name)
    except ImportError as exc:
        if (getattr(exc, "name", None) or "").split(".")[0] not in {"sqlalchemy", "greenlet"}:
            raise
        from ..backend import missing_extra

        raise missing_extra("outbox", "sqlalchemy", exc.name or str(exc)) from exc


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
