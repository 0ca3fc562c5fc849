"""The write side of the outbox: a `JobDispatcherPort` that turns each dispatch into a row.

Validation is the core's own (C4–C6): a payload that does not fit raises `JobPayloadError`
and records `failed` (phase `schedule`), and `dispatch_many` validates every item before it
writes any. The rows are written by a subclass (SQLAlchemy session, Django ORM), always in the
caller's transaction: they are sent by the relay once that transaction has committed.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from pydantic import BaseModel

from .. import DispatchReceipt, Job, JobRequest
from ..dispatcher import resolve_eta
from ..errors import JobPayloadError
from ..instrumentation import Instrumentation, JobEvent, describe_error, safe_record, with_logging
from ..payload import DEFAULT_MAX_PAYLOAD_BYTES, to_wire, validate_payload
from ..port import DispatchItem

P = TypeVar("P", bound=BaseModel)

BACKEND = "outbox"
"""The `backend` of an outbox receipt: the job is in the outbox, not yet with a backend."""

PENDING, SENT, FAILED = "pending", "sent", "failed"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One dispatch as the outbox stores it.

    `key` is the row's own id (a uuid) and the receipt's `dispatch_id`; the relay sends the job
    with `idempotency_key=idempotency_key or "outbox:" + key`, so a resend runs it once (C32).
    `payload` is the validated payload in its JSON form; `run_at` is when the job may start.
    """

    job_name: str
    payload: Any
    run_at: datetime | None = None
    idempotency_key: str | None = None
    key: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=utcnow)

    def as_row(self) -> dict[str, Any]:
        """The column values of a new (pending) row."""
        return {
            "key": self.key,
            "job_name": self.job_name,
            "payload": self.payload,
            "run_at": self.run_at,
            "idempotency_key": self.idempotency_key,
            "status": PENDING,
            "attempts": 0,
            "created_at": self.created_at,
            "available_at": self.created_at,
        }

    def receipt(self) -> DispatchReceipt:
        return DispatchReceipt(self.job_name, self.key, BACKEND)


class OutboxWriter(ABC):
    """A dispatcher that writes outbox rows; a subclass says where (`_write`, `_write_async`)."""

    backend_name = BACKEND

    def __init__(
        self,
        *,
        instrumentation: Instrumentation | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.instrumentation = with_logging(instrumentation)
        self.max_payload_bytes = max_payload_bytes

    @abstractmethod
    def _write(self, messages: Sequence[OutboxMessage]) -> None:
        """Write `messages` as rows in the caller's transaction, in one statement."""

    async def _write_async(self, messages: Sequence[OutboxMessage]) -> None:
        self._write(messages)

    # -- the port -------------------------------------------------------------------------

    async def dispatch(
        self,
        job: Job[P, Any],
        payload: P | Mapping[str, Any],
        *,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> DispatchReceipt:
        """Validate `payload` and write its row; it is sent after the transaction commits."""
        message = self.prepare(job, payload, delay, run_at, idempotency_key)
        await self._write_async([message])
        return message.receipt()

    def dispatch_sync(
        self,
        job: Job[P, Any],
        payload: P | Mapping[str, Any],
        *,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> DispatchReceipt:
        """`dispatch` for sync code."""
        message = self.prepare(job, payload, delay, run_at, idempotency_key)
        self._write([message])
        return message.receipt()

    async def dispatch_many(
        self,
        items: Iterable[DispatchItem],
        *,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
    ) -> list[DispatchReceipt]:
        """Validate every item, then write them all in one insert."""
        messages = self.prepare_many(items, delay, run_at)
        if messages:
            await self._write_async(messages)
        return [m.receipt() for m in messages]

    def dispatch_many_sync(
        self,
        items: Iterable[DispatchItem],
        *,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
    ) -> list[DispatchReceipt]:
        """`dispatch_many` for sync code."""
        messages = self.prepare_many(items, delay, run_at)
        if messages:
            self._write(messages)
        return [m.receipt() for m in messages]

    # -- validation -----------------------------------------------------------------------

    def prepare(
        self,
        job: Job[Any, Any],
        payload: Any,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> OutboxMessage:
        """Validate one dispatch exactly as every dispatcher does (C4, C5) and make its row."""
        if not isinstance(job, Job):
            raise TypeError(f"dispatch expects a Job (from JobRegistry.job), got {job!r}")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not idempotency_key
        ):
            raise ValueError("idempotency_key= must be a non-empty str")
        try:
            model = validate_payload(job, payload)
            data = to_wire(job, model, self.max_payload_bytes)
        except JobPayloadError as error:
            safe_record(
                self.instrumentation,
                JobEvent(
                    "failed", "schedule", job.name, None, 0, BACKEND, error=describe_error(error)
                ),
            )
            raise
        return OutboxMessage(job.name, data, resolve_eta(delay, run_at), idempotency_key)

    def prepare_many(
        self, items: Iterable[DispatchItem], delay: timedelta | None, run_at: datetime | None
    ) -> list[OutboxMessage]:
        messages = []
        for item in items:
            if isinstance(item, JobRequest):
                messages.append(
                    self.prepare(
                        item.job,
                        item.payload,
                        item.delay if item.delay is not None else delay,
                        item.run_at if item.run_at is not None else run_at,
                        item.idempotency_key,
                    )
                )
            else:
                job, payload = item
                messages.append(self.prepare(job, payload, delay, run_at))
        return messages
