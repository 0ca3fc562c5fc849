"""The outbox as Django models: the same tables and columns as `jobs_core.outbox.tables`."""

from __future__ import annotations

from datetime import datetime

from django.db import models

from jobs_core.outbox.writer import FAILED, PENDING, SENT


class OutboxMessage(models.Model):
    """One dispatch made through the outbox: `pending` until the relay sends it (`sent`), or
    `failed` if it can never be sent (see `last_error`; `requeue_failed` puts it back)."""

    STATUSES = [(PENDING, "pending"), (SENT, "sent"), (FAILED, "failed")]

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    key: models.CharField[str, str] = models.CharField(max_length=36, unique=True)
    job_name: models.TextField[str, str] = models.TextField()
    payload = models.JSONField()
    run_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True
    )
    idempotency_key: models.TextField[str | None, str | None] = models.TextField(
        null=True, blank=True
    )
    status: models.CharField[str, str] = models.CharField(
        max_length=16, choices=STATUSES, default=PENDING
    )
    attempts: models.IntegerField[int, int] = models.IntegerField(default=0)
    last_error: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)
    created_at: models.DateTimeField[datetime, datetime] = models.DateTimeField()
    available_at: models.DateTimeField[datetime, datetime] = models.DateTimeField()
    sent_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True
    )
    dispatch_id: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)
    headers = models.JSONField(null=True, blank=True)
    """What hooks (tracing) added in the writing transaction, for the relay to send on."""

    class Meta:
        db_table = "jobs_outbox"
        verbose_name = "outbox message"
        indexes = [
            models.Index(
                fields=["id"], name="jobs_outbox_pending_idx", condition=models.Q(status=PENDING)
            ),
            models.Index(fields=["status", "sent_at"], name="jobs_outbox_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.job_name} #{self.pk} ({self.status})"


class OutboxRelayLease(models.Model):
    """Which relay may send, on databases that cannot lock rows (SQLite)."""

    name: models.CharField[str, str] = models.CharField(max_length=64, primary_key=True)
    owner: models.TextField[str, str] = models.TextField()
    expires_at: models.DateTimeField[datetime, datetime] = models.DateTimeField()

    class Meta:
        db_table = "jobs_outbox_relay"
        verbose_name = "outbox relay lease"

    def __str__(self) -> str:
        return f"{self.name}: {self.owner}"


class StepRecord(models.Model):
    """One record of a run with steps (a completed step's value, a step's failed attempts, a
    sleep's end): the same table and columns as `jobs_core.steps.sql_store`."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    run_id: models.CharField[str, str] = models.CharField(max_length=64)
    key: models.CharField[str, str] = models.CharField(max_length=255)
    value: models.TextField[str, str] = models.TextField()
    expires_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True
    )

    class Meta:
        db_table = "jobs_steps"
        verbose_name = "step record"
        constraints = [
            models.UniqueConstraint(fields=["run_id", "key"], name="jobs_steps_run_key"),
        ]
        indexes = [models.Index(fields=["expires_at"], name="jobs_steps_expires_idx")]

    def __str__(self) -> str:
        return f"{self.run_id} {self.key}"
