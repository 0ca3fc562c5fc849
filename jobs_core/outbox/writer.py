"""The write side of the outbox: a `JobDispatcherPort` that turns each dispatch into a row.

Validation is the core's own (C4–C6): a payload that does not fit raises `JobPayloadError`
and records `failed` (phase `schedule`), and `dispatch_many` validates every item before it
writes any. The rows are written by a subclass (SQLAlchemy session, Django ORM), always in the
caller's transaction: they are sent by the relay once that transaction has committed.
"""

from __future__ import annotations

import dataclasses
import uuid
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from pydantic import BaseModel
from typing_extensions import Unpack

from .. import DispatchReceipt, Job, hooks
from ..dispatch.dispatcher import PortMethods, prepare_dispatch
from ..dispatch.port import DispatchOptions
from ..errors import JobsError
from ..instrumentation import Instrumentation, JobEvent, describe_error, safe_record, with_logging
from ..jobs.payload import DEFAULT_MAX_PAYLOAD_BYTES

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
    headers: Mapping[str, str] | None = None
    """What hooks (tracing) add in the writing transaction, for the relay to send on."""

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
            "headers": dict(self.headers) if self.headers else None,
        }

    def receipt(self) -> DispatchReceipt:
        return DispatchReceipt(self.job_name, self.key, BACKEND)


class OutboxWriter(PortMethods[OutboxMessage]):
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

    @contextmanager
    def _hooked(self, prepared: list[OutboxMessage]) -> Iterator[list[OutboxMessage]]:
        """Within every hook's view of the write (a trace's span for it): their headers are
        kept in the rows, so the jobs the relay sends later continue this trace."""
        if not hooks.HOOKS or not prepared:
            yield prepared
            return
        jobs = [hooks.Sending(m.job_name, m.key) for m in prepared]
        with hooks.dispatching(BACKEND, jobs) as headers:
            yield [
                dataclasses.replace(m, headers=h) if h else m
                for m, h in zip(prepared, headers, strict=True)
            ]

    def _submit(self, prepared: Sequence[OutboxMessage]) -> list[DispatchReceipt]:
        if prepared:
            self._write(prepared)
        return [m.receipt() for m in prepared]

    async def _submit_async(self, prepared: Sequence[OutboxMessage]) -> list[DispatchReceipt]:
        if prepared:
            await self._write_async(prepared)
        return [m.receipt() for m in prepared]

    # -- validation -----------------------------------------------------------------------

    def prepare(
        self, job: Job[Any, Any], payload: Any, **options: Unpack[DispatchOptions]
    ) -> OutboxMessage:
        """Validate one dispatch exactly as every dispatcher does (C4, C5, C27) and make its
        row; a payload-derived idempotency key is stored with it, so the relay sends with it."""
        try:
            prepared = prepare_dispatch(job, payload, self.max_payload_bytes, **options)
        except JobsError as error:
            if isinstance(job, Job):
                event = JobEvent(
                    "failed", "schedule", job.name, None, 0, BACKEND, error=describe_error(error)
                )
                safe_record(self.instrumentation, event)
            raise
        return OutboxMessage(
            job.name,
            prepared.data,
            prepared.eta,
            prepared.idempotency_key,
            headers=prepared.headers,
        )
