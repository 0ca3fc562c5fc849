"""The dispatcher port the application codes against, and the receipt a dispatch returns."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeAlias, TypedDict, runtime_checkable

from pydantic import BaseModel
from typing_extensions import Unpack

from ..events.event import Event, EventReceipt, M
from ..jobs.job import Job, JobRequest, P


@dataclass(frozen=True, slots=True)
class DispatchReceipt:
    """Proof that a backend accepted a job.

    `dispatch_id` is what the backend traces the job by: the Celery task id, the Dramatiq message
    id, the Inngest event id: jobs_core chooses it, 32 random hex digits, or `<job>:<key>` with
    an idempotency key. `deduplicated` is True when an earlier dispatch with the same
    idempotency key made this one a no-op (C9).
    """

    job_name: str
    dispatch_id: str
    backend: str
    deduplicated: bool = False


DispatchItem: TypeAlias = JobRequest[Any] | tuple[Job[Any, Any], BaseModel | Mapping[str, Any]]

EventItem: TypeAlias = tuple[Event[Any], BaseModel | Mapping[str, Any]]
"""One event of `send_many`: (event, data)."""


class BatchOptions(TypedDict, total=False):
    """The options of `dispatch_many`; an item's own (`Job.request`) win over them."""

    delay: timedelta | None
    """How long to wait before the job runs."""
    run_at: datetime | None
    """When the job runs (an aware datetime); not with `delay`."""


class SendOptions(BatchOptions, total=False):
    """The options of `send`."""

    id: str | None
    """The event's id: a second send with the same id within 24 h runs no job again (C40)."""


class DispatchOptions(BatchOptions, total=False):
    """The options of `dispatch`."""

    idempotency_key: str | None
    """Two dispatches of a job with the same key within 24 h run it once (C9)."""
    headers: Mapping[str, str] | None
    """What hooks (tracing) carry with the job; set by the outbox relay, not by apps."""


@runtime_checkable
class JobDispatcherPort(Protocol):
    """What a use case needs to start background jobs, whatever runs them.

    Options: `delay` (timedelta) or `run_at` (an aware datetime), and `idempotency_key`: two
    dispatches of a job with the same key within 24 h run it once. `payload` is an instance of
    the job's own model or a mapping of its fields; a type checker flags another model.
    """

    async def dispatch(
        self, job: Job[P, Any], payload: P | Mapping[str, Any], **options: Unpack[DispatchOptions]
    ) -> DispatchReceipt:
        """Validate `payload` and hand the job to the backend."""

    def dispatch_sync(
        self, job: Job[P, Any], payload: P | Mapping[str, Any], **options: Unpack[DispatchOptions]
    ) -> DispatchReceipt:
        """`dispatch` for sync code (Django views, Flask, scripts)."""

    async def dispatch_many(
        self, items: Iterable[DispatchItem], **options: Unpack[BatchOptions]
    ) -> list[DispatchReceipt]:
        """Validate every item, then send them all (one round trip where the backend allows);
        nothing is sent unless every item is valid."""

    def dispatch_many_sync(
        self, items: Iterable[DispatchItem], **options: Unpack[BatchOptions]
    ) -> list[DispatchReceipt]:
        """`dispatch_many` for sync code."""

    async def send(
        self, event: Event[M], data: M | Mapping[str, Any], **options: Unpack[SendOptions]
    ) -> EventReceipt:
        """Validate `data` with the event's model, then run every job triggered by `event`
        once with it (C40); nothing is sent unless the data is valid."""

    def send_sync(
        self, event: Event[M], data: M | Mapping[str, Any], **options: Unpack[SendOptions]
    ) -> EventReceipt:
        """`send` for sync code."""

    async def send_many(
        self, items: Iterable[EventItem], **options: Unpack[BatchOptions]
    ) -> list[EventReceipt]:
        """Send several events (one round trip where the backend allows); nothing is sent
        unless every one is valid."""

    def send_many_sync(
        self, items: Iterable[EventItem], **options: Unpack[BatchOptions]
    ) -> list[EventReceipt]:
        """`send_many` for sync code."""
