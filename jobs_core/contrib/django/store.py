"""The relay's view of the outbox through the Django ORM (see jobs_core.outbox.relay).

Where the database can (`has_select_for_update_skip_locked`: PostgreSQL, MySQL 8, Oracle),
a round claims rows with `select_for_update(skip_locked=True)` and records their outcome in the
same transaction; elsewhere (SQLite) it reads, sends and records in short transactions and the
relay lease keeps a single relay sending.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, close_old_connections, connections, transaction
from django.db.models import F, Q

from jobs_core.outbox.relay import PendingRow, RowResult
from jobs_core.outbox.writer import FAILED, PENDING, SENT, utcnow

LEASE_NAME = "relay"
_FIELDS = (
    "id",
    "key",
    "job_name",
    "payload",
    "run_at",
    "idempotency_key",
    "attempts",
    "headers",
)


@dataclass
class _Claim:
    rows: list[PendingRow]
    record_with: Callable[[Sequence[RowResult]], None]

    def record(self, results: Sequence[RowResult]) -> None:
        self.record_with(results)


class DjangoStore:
    """The `OutboxMessage` table on database `using`, for `Relay`."""

    def __init__(self, using: str = "default") -> None:
        self.using = using
        self.locks_rows = bool(connections[using].features.has_select_for_update_skip_locked)

    def _pending(self) -> Any:
        from .models import OutboxMessage

        return (
            OutboxMessage.objects.using(self.using)
            .filter(status=PENDING, available_at__lte=utcnow())
            .order_by("id")
        )

    @contextmanager
    def claim(self, limit: int) -> Iterator[_Claim]:
        close_old_connections()  # a long-running relay: drop a connection the database closed
        if self.locks_rows:
            with transaction.atomic(using=self.using):
                query = self._pending().select_for_update(skip_locked=True)
                rows = [PendingRow(*r) for r in query.values_list(*_FIELDS)[:limit]]
                yield _Claim(rows, self._apply)
            return
        rows = [PendingRow(*r) for r in self._pending().values_list(*_FIELDS)[:limit]]
        yield _Claim(rows, self._apply_apart)

    def _apply_apart(self, results: Sequence[RowResult]) -> None:
        with transaction.atomic(using=self.using):
            self._apply(results)

    def _apply(self, results: Sequence[RowResult]) -> None:
        from .models import OutboxMessage

        now = utcnow()
        changed: list[OutboxMessage] = []
        for r in results:
            row = OutboxMessage(id=r.row.id, attempts=r.row.attempts, available_at=now)
            if r.outcome == "sent":
                row.status, row.sent_at, row.dispatch_id, row.last_error = (
                    SENT,
                    now,
                    r.dispatch_id,
                    None,
                )
            elif r.outcome == "failed":
                row.status, row.attempts, row.last_error = FAILED, r.row.attempts + 1, r.error
            else:
                row.status, row.attempts, row.last_error = PENDING, r.row.attempts + 1, r.error
            changed.append(row)
        sent = [c for c in changed if c.status == SENT]
        failed = [c for c in changed if c.status == FAILED]
        manager = OutboxMessage.objects.using(self.using)
        if sent:
            manager.bulk_update(sent, ["status", "sent_at", "dispatch_id", "last_error"])
        if failed:
            manager.bulk_update(failed, ["status", "attempts", "last_error"])
        for r in results:
            if r.outcome == "retry":
                update: dict[str, Any] = {"attempts": F("attempts") + 1, "last_error": r.error}
                if r.available_at is not None:
                    update["available_at"] = r.available_at
                manager.filter(id=r.row.id, status=PENDING).update(**update)

    def take_lease(self, owner: str, ttl: timedelta) -> str | None:
        from .models import OutboxRelayLease

        now = utcnow()
        leases = OutboxRelayLease.objects.using(self.using)
        mine = Q(owner=owner) | Q(expires_at__lt=now)
        if leases.filter(mine, name=LEASE_NAME).update(owner=owner, expires_at=now + ttl):
            return None
        holder = leases.filter(name=LEASE_NAME).values_list("owner", flat=True).first()
        if holder is not None:
            return str(holder)
        try:
            with transaction.atomic(using=self.using):
                leases.create(name=LEASE_NAME, owner=owner, expires_at=now + ttl)
        except IntegrityError:
            return "another relay (it took the lease just now)"
        return None

    def release_lease(self, owner: str) -> None:
        from .models import OutboxRelayLease

        OutboxRelayLease.objects.using(self.using).filter(name=LEASE_NAME, owner=owner).delete()

    def purge_sent(self, before: datetime) -> int:
        from .models import OutboxMessage

        manager = OutboxMessage.objects.using(self.using)
        deleted, _ = manager.filter(status=SENT, sent_at__lt=before).delete()
        return int(deleted)

    def requeue_failed(self, ids: Sequence[int] | None = None) -> int:
        from .models import OutboxMessage

        failed = OutboxMessage.objects.using(self.using).filter(status=FAILED)
        if ids is not None:
            failed = failed.filter(id__in=list(ids))
        return int(failed.update(status=PENDING, attempts=0, available_at=utcnow()))

    def counts(self) -> dict[str, int]:
        from django.db.models import Count

        from .models import OutboxMessage

        found = dict(
            OutboxMessage.objects.using(self.using)
            .values_list("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        )
        return {status: int(found.get(status, 0)) for status in (PENDING, SENT, FAILED)}
