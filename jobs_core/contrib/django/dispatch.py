"""Dispatching from Django: through the outbox (crash-proof), or with `transaction.on_commit`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import transaction
from pydantic import BaseModel

from jobs_core import Job, JobDispatcherPort
from jobs_core.dispatch.dispatcher import resolve_eta
from jobs_core.instrumentation import Instrumentation
from jobs_core.jobs.payload import validate_payload
from jobs_core.outbox.writer import OutboxMessage, OutboxWriter

P = TypeVar("P", bound=BaseModel)

logger = logging.getLogger("jobs_core.contrib.django")


class DjangoOutboxDispatcher(OutboxWriter):
    """A `JobDispatcherPort` that writes each dispatch as an `OutboxMessage` row on database
    `using`, in the current transaction (`transaction.atomic`): nothing is sent until it
    commits, and a rollback leaves nothing. Outside `atomic` the row commits at once, which is
    still after the writes before it. The relay (`manage.py jobs_relay`) sends the rows."""

    def __init__(
        self, using: str | None = None, *, instrumentation: Instrumentation | None = None
    ) -> None:
        super().__init__(instrumentation=instrumentation)
        self.using = using

    def _write(self, messages: Sequence[OutboxMessage]) -> None:
        from .models import OutboxMessage as Row

        Row.objects.using(self.using).bulk_create([Row(**m.as_row()) for m in messages])

    async def _write_async(self, messages: Sequence[OutboxMessage]) -> None:
        await sync_to_async(self._write)(messages)

    def __repr__(self) -> str:
        return f"DjangoOutboxDispatcher(using={self.using!r})"


def outbox_dispatcher(using: str | None = None) -> DjangoOutboxDispatcher:
    """The outbox dispatcher for database `using` (default: the default database)."""
    return DjangoOutboxDispatcher(using)


def dispatch_on_commit(
    job: Job[P, Any],
    payload: P | Mapping[str, Any],
    *,
    delay: timedelta | None = None,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    using: str | None = None,
    dispatcher: JobDispatcherPort | None = None,
) -> None:
    """Dispatch `job` when the current transaction on `using` commits (at once outside one).

    The payload is validated now: a bad one raises `JobPayloadError` here, inside the
    transaction. A `delay` counts from this call. This is Django's plain `on_commit` hook: if
    the process dies between the commit and the dispatch, or the backend is down then, the job
    is lost (logged at ERROR). Use `outbox_dispatcher()` where that must not happen.
    """
    from .settings import get_dispatcher

    model: Any = validate_payload(job, payload)
    eta = resolve_eta(delay, run_at)

    def send() -> None:
        target = dispatcher or get_dispatcher()
        try:
            target.dispatch_sync(job, model, run_at=eta, idempotency_key=idempotency_key)
        except Exception:
            logger.exception(
                "job %s was not dispatched after the commit: it is lost (use the outbox where "
                "this must not happen)",
                job.name,
            )
            raise

    transaction.on_commit(send, using=using, robust=True)
