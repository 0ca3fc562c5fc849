"""The steps of runs in the Django app's database (`JOBS_STEP_STORE_URL=django`, or
`DjangoStepStore(using=...)`): the `StepRecord` model, table `jobs_steps`, the same table as
`jobs_core.steps.sql_store` keeps (`python manage.py migrate` creates it)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from django.db import IntegrityError, transaction

from jobs_core.steps.store import PURGE_EVERY

from .models import StepRecord


class DjangoStepStore:
    """`StepStore` on the Django ORM, database `using`."""

    def __init__(self, using: str = "default") -> None:
        self.using = using
        self._purged = 0.0

    def load(self, run_id: str) -> dict[str, str]:
        rows = StepRecord.objects.using(self.using).filter(run_id=run_id)
        return dict(rows.values_list("key", "value"))

    def save(self, run_id: str, key: str, value: str) -> str:
        records = StepRecord.objects.using(self.using)
        try:
            with transaction.atomic(using=self.using):
                records.create(run_id=run_id, key=key, value=value)
            return value
        except IntegrityError:  # another delivery stored it first: its value stands
            return records.get(run_id=run_id, key=key).value

    def put(self, run_id: str, key: str, value: str) -> None:
        records = StepRecord.objects.using(self.using)
        records.update_or_create(run_id=run_id, key=key, defaults={"value": value})

    def finish(self, run_id: str, retention: timedelta) -> None:
        now = datetime.now(timezone.utc)
        records = StepRecord.objects.using(self.using)
        records.filter(run_id=run_id).update(expires_at=now + retention)
        if time.monotonic() - self._purged >= PURGE_EVERY:
            self._purged = time.monotonic()
            records.filter(expires_at__lt=now).delete()

    def __repr__(self) -> str:
        return f"DjangoStepStore(using={self.using!r})"
