"""`Outbox`: the transactional outbox for SQLAlchemy 2 (sync and async engines)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

from sqlalchemy import Engine, insert, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_scoped_session
from sqlalchemy.orm import Session, scoped_session

from .. import JobDispatcherPort, JobRegistry
from ..instrumentation import Instrumentation
from ..jobs.payload import DEFAULT_MAX_PAYLOAD_BYTES
from .relay import Relay
from .sqlalchemy_store import AsyncSqlAlchemyStore, SqlAlchemyStore
from .tables import metadata, outbox_table
from .writer import OutboxMessage, OutboxWriter

AnySession: TypeAlias = (
    "Session | scoped_session[Session] | AsyncSession | async_scoped_session[AsyncSession]"
)


class SessionOutboxDispatcher(OutboxWriter):
    """A `JobDispatcherPort` that writes each dispatch as an outbox row in `session`'s
    transaction. Nothing is sent until that transaction commits; a rollback leaves nothing.

    With an `AsyncSession`, use the async methods (`await dispatch(...)`): the sync ones would
    have to block the event loop on the database.
    """

    def __init__(
        self,
        session: AnySession,
        *,
        instrumentation: Instrumentation | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        super().__init__(instrumentation=instrumentation, max_payload_bytes=max_payload_bytes)
        self.session = session
        self.is_async = isinstance(session, (AsyncSession, async_scoped_session))

    def _write(self, messages: Sequence[OutboxMessage]) -> None:
        if self.is_async:
            raise TypeError(
                "this outbox dispatcher writes through an AsyncSession: use `await "
                "dispatch(...)` / `await dispatch_many(...)`, not the *_sync methods"
            )
        session: Session | scoped_session[Session] = self.session  # type: ignore[assignment]
        session.execute(insert(outbox_table), [m.as_row() for m in messages])

    async def _write_async(self, messages: Sequence[OutboxMessage]) -> None:
        if not self.is_async:
            self._write(messages)
            return
        session: AsyncSession | async_scoped_session[AsyncSession] = self.session  # type: ignore[assignment]
        await session.execute(insert(outbox_table), [m.as_row() for m in messages])

    def __repr__(self) -> str:
        return f"SessionOutboxDispatcher(session={self.session!r})"


class Outbox:
    """The outbox in the database behind `engine` (a SQLAlchemy `Engine` or `AsyncEngine`).

    ```python
    outbox = Outbox(engine)
    with Session(engine) as session, session.begin():
        session.add(order)
        outbox.dispatcher(session).dispatch_sync(send_receipt, {"order_id": order.id})
    # elsewhere, in its own process: python -m jobs_core relay myapp.jobs:jobs --database-url ...
    ```

    `metadata` holds the outbox's tables (for Alembic); `create_table()` creates them.
    """

    metadata = metadata
    table = outbox_table

    def __init__(
        self,
        engine: Engine | AsyncEngine,
        *,
        instrumentation: Instrumentation | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        if not isinstance(engine, (Engine, AsyncEngine)):
            raise TypeError(f"Outbox needs a SQLAlchemy Engine or AsyncEngine, got {engine!r}")
        self.engine = engine
        self.instrumentation = instrumentation
        self.max_payload_bytes = max_payload_bytes
        self.store: SqlAlchemyStore | AsyncSqlAlchemyStore = (
            AsyncSqlAlchemyStore(engine)
            if isinstance(engine, AsyncEngine)
            else SqlAlchemyStore(engine)
        )

    @property
    def is_async(self) -> bool:
        return isinstance(self.engine, AsyncEngine)

    def create_table(self) -> None:
        """Create the outbox tables if they do not exist (sync engine); a table made by an
        earlier version gets the columns it lacks (`headers`)."""
        if isinstance(self.engine, AsyncEngine):
            raise TypeError(
                "this Outbox has an AsyncEngine: use `await outbox.create_table_async()`"
            )
        with self.engine.begin() as conn:
            _create_or_upgrade(conn)

    async def create_table_async(self) -> None:
        """Create the outbox tables if they do not exist (either engine)."""
        if isinstance(self.engine, AsyncEngine):
            async with self.engine.begin() as conn:
                await conn.run_sync(_create_or_upgrade)
        else:
            self.create_table()

    def dispatcher(self, session: AnySession) -> SessionOutboxDispatcher:
        """A `JobDispatcherPort` writing into `session`'s transaction (same database)."""
        return SessionOutboxDispatcher(
            session,
            instrumentation=self.instrumentation,
            max_payload_bytes=self.max_payload_bytes,
        )

    def relay(self, dispatcher: JobDispatcherPort, jobs: JobRegistry[Any], **options: Any) -> Relay:
        """A `Relay` sending this outbox's rows through `dispatcher` (see `Relay` for options)."""
        options.setdefault("instrumentation", self.instrumentation)
        return Relay(self.store, dispatcher, jobs, is_async=self.is_async, **options)

    def requeue_failed(self, ids: Sequence[int] | None = None) -> int:
        """Put failed rows (all, or those of `ids`) back to pending, once their cause is fixed."""
        store = self._sync_store("requeue_failed")
        return store.requeue_failed(ids)

    def counts(self) -> dict[str, int]:
        """Rows per status: `pending`, `sent`, `failed` (for monitoring)."""
        return self._sync_store("counts").counts()

    def _sync_store(self, what: str) -> SqlAlchemyStore:
        if isinstance(self.store, AsyncSqlAlchemyStore):
            raise TypeError(f"this Outbox has an AsyncEngine: use `await outbox.store.{what}()`")
        return self.store

    def __repr__(self) -> str:
        return f"Outbox({self.engine!r})"


def _create_or_upgrade(conn: Any) -> None:
    """`metadata.create_all`, then the columns a table made by an earlier version lacks."""
    metadata.create_all(conn)
    present = {column["name"] for column in inspect(conn).get_columns(outbox_table.name)}
    if "headers" not in present:
        kind = outbox_table.c.headers.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE {outbox_table.name} ADD COLUMN headers {kind}"))
