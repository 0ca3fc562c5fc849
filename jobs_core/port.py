"""The dispatcher port the application codes against, and the receipt a dispatch returns."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeAlias, runtime_checkable

from pydantic import BaseModel

from .job import Job, JobRequest, P


@dataclass(frozen=True, slots=True)
class DispatchReceipt:
    """Proof that a backend accepted a job.

    `dispatch_id` is what the backend traces the job by: the Celery task id, the Dramatiq message
    id, the Inngest event id (jobs_core chooses it, see `jobs_core.ids`, or `<job>:<key>` with
    an idempotency key). `deduplicated` is True when an earlier dispatch with the same
    idempotency key made this one a no-op (C9).
    """

    job_name: str
    dispatch_id: str
    backend: str
    deduplicated: bool = False


DispatchItem: TypeAlias = JobRequest[Any] | tuple[Job[Any, Any], BaseModel | Mapping[str, Any]]


@runtime_checkable
class JobDispatcherPort(Protocol):
    """What a use case needs to start background jobs, whatever runs them.

    Options: `delay` (timedelta) or `run_at` (an aware datetime), and `idempotency_key`: two
    dispatches of a job with the same key within 24 h run it once. `payload` is an instance of
    the job's own model or a mapping of its fields; a type checker flags another model.
    """

    async def dispatch(
        self,
        job: Job[P, Any],
        payload: P | Mapping[str, Any],
        *,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> DispatchReceipt: ...

    def dispatch_sync(
        self,
        job: Job[P, Any],
        payload: P | Mapping[str, Any],
        *,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> DispatchReceipt: ...

    async def dispatch_many(
        self,
        items: Iterable[DispatchItem],
        *,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
    ) -> list[DispatchReceipt]: ...

    def dispatch_many_sync(
        self,
        items: Iterable[DispatchItem],
        *,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
    ) -> list[DispatchReceipt]: ...
