"""Quickstart: a signup use case that dispatches a welcome email, a flaky import, and a job that
always fails permanently. Runs on the backend chosen by JOBS_BACKEND (inline by default):

    python examples/quickstart.py

On inline, every job runs inside `dispatch` and the script prints what ran: job, attempts,
outcome. On Celery, Dramatiq or Inngest the same jobs run in that backend's worker (see
examples/celery, examples/dramatiq, examples/inngest) and this script prints the receipts.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, EmailStr

from jobs_core import (
    JobDispatcherPort,
    JobEvent,
    JobFailedError,
    JobRegistry,
    PermanentError,
    Retry,
    create_dispatcher,
)


class Mailer:
    """The app's mail port; this one prints instead of sending."""

    def send(self, to: str, subject: str) -> None:
        print(f"    mailer: to={to} subject={subject!r}")


@dataclass
class AppContext:
    """What use cases and job handlers get: the app's ports."""

    mailer: Mailer
    jobs: JobDispatcherPort


jobs = JobRegistry[AppContext]()

FAST = Retry(attempts=3, min_backoff=timedelta(milliseconds=200), max_backoff=timedelta(seconds=2))


class Welcome(BaseModel):
    email: EmailStr


@jobs.job("mail.welcome", retry=FAST)
async def send_welcome(payload: Welcome, ctx: AppContext) -> None:
    ctx.mailer.send(payload.email, "Welcome aboard")


class ImportBatch(BaseModel):
    batch_id: str
    rows: int


_import_runs: dict[str, int] = defaultdict(int)
_import_lock = threading.Lock()


@jobs.job("contacts.import", retry=FAST)
def import_contacts(payload: ImportBatch, ctx: AppContext) -> None:
    """Fails twice (a flaky upstream), then succeeds on the third run."""
    with _import_lock:
        _import_runs[payload.batch_id] += 1
        run = _import_runs[payload.batch_id]
    if run <= 2:
        raise ConnectionError(f"upstream timed out (run {run})")
    print(f"    imported {payload.rows} rows of batch {payload.batch_id}")


class Charge(BaseModel):
    customer_id: int
    cents: int


def charge_failed(error: BaseException, payload: Any, ctx: AppContext) -> None:
    print(f"    on_failure: customer {payload.customer_id} told that the charge failed ({error})")


@jobs.job("billing.charge", retry=FAST, on_failure=charge_failed)
def charge_card(payload: Charge, ctx: AppContext) -> None:
    raise PermanentError("card declined")


# -- wiring -------------------------------------------------------------------------------


class RunReport:
    """Instrumentation that prints each event and sums up runs and outcomes per job."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = defaultdict(int)
        self.outcome: dict[str, str] = {}

    def record(self, event: JobEvent) -> None:
        if event.phase == "execute" and event.kind == "started":
            self.runs[event.job_name] += 1
        if event.kind in ("completed", "failed"):
            self.outcome[event.job_name] = event.kind
        extra = f" ({event.error})" if event.error else ""
        print(f"  [{event.backend}] {event.job_name} attempt={event.attempt} {event.kind}{extra}")

    def print_summary(self) -> None:
        print(f"\n{'job':<18} {'runs':>4}  outcome")
        for name, runs in self.runs.items():
            print(f"{name:<18} {runs:>4}  {self.outcome.get(name, 'pending')}")


report = RunReport()
_dispatcher: JobDispatcherPort | None = None


def dispatcher() -> JobDispatcherPort:
    global _dispatcher
    if _dispatcher is None:
        _dispatcher = create_dispatcher(context=create_context, instrumentation=report)
    return _dispatcher


def create_context() -> AppContext:
    """The context factory: workers call it once per run."""
    return AppContext(mailer=Mailer(), jobs=dispatcher())


def sign_up(ctx: AppContext, email: str) -> None:
    """A use case: create the account (elided), then dispatch the welcome email."""
    receipt = ctx.jobs.dispatch_sync(send_welcome, {"email": email})
    print(f"  signed up {email}: {receipt.job_name} -> {receipt.backend} id={receipt.dispatch_id}")


def main() -> None:
    ctx = create_context()
    sign_up(ctx, "ada@example.com")
    ctx.jobs.dispatch_sync(import_contacts, ImportBatch(batch_id="b-1", rows=3))
    try:
        ctx.jobs.dispatch_sync(charge_card, {"customer_id": 42, "cents": 1999})
    except JobFailedError as exc:  # inline only: durable backends report this in the worker
        print(f"  dispatch raised JobFailedError: {exc}")
    report.print_summary()


if __name__ == "__main__":
    main()
