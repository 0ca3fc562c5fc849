"""The relay: sends committed outbox rows through a dispatcher and marks them sent (C31–C33).

A round claims up to `batch_size` pending rows in id order, sends them with one
`dispatch_many_sync`, and records the outcome of each row in the same database transaction as
the claim. Each row is sent with its own idempotency key (the user's, or `outbox:<row key>`), so
a row sent again after a crash between sending and marking runs its job once (C32).

What happens to a row:

- sent: `status="sent"`, the backend's dispatch id and the time are kept on the row;
- it can never be sent (its job is not in the relay's registry, its payload no longer fits the
  model): `status="failed"` with the error, logged, recorded as `failed` (phase `schedule`);
  the rows behind it go on (C33). `requeue_failed` puts such rows back once fixed;
- the backend refused it (`DispatchError`: down, timed out): the row stays pending, its
  `attempts` and `last_error` say why, and the relay waits before the next round, longer after
  each failed round (C33). A row the backend refuses while the rows around it go through is
  put back with a backoff of its own, so it does not hold the others up.

The relay never marks a row failed because the backend was down: only the row's content can
make it fail. On a dispatcher that runs jobs inside `dispatch` (inline), each row is sent alone
and a job that gives up there (`JobFailedError`) is that job's outcome: the row is sent, and the
rows behind it run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypeAlias

from pydantic import BaseModel

from .. import DispatchReceipt, JobDispatcherPort, JobRegistry, JobRequest, hooks
from ..calling import run_without_loop
from ..dispatch.prepared import keyed_dispatch_id
from ..errors import JobFailedError, JobPayloadError
from ..instrumentation import Instrumentation, JobEvent, describe_error, safe_record, with_logging
from ..jobs.payload import validate_payload
from .writer import BACKEND, utcnow

BACKLOG_EVERY = 10.0
"""Seconds between two counts of the outbox's backlog (a gauge, with tracing on)."""
logger = logging.getLogger("jobs_core.outbox")

Outcome: TypeAlias = Literal["sent", "failed", "retry"]


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A pending outbox row, as a store hands it to the relay."""

    id: int
    key: str
    job_name: str
    payload: Any
    run_at: datetime | None
    idempotency_key: str | None
    attempts: int
    headers: Any = None
    """What hooks (tracing) added when the row was written: sent on with the job."""

    @property
    def send_key(self) -> str:
        """The idempotency key the row is sent with: the user's, else one made from its key."""
        return self.idempotency_key or f"outbox:{self.key}"


@dataclass(frozen=True, slots=True)
class RowResult:
    """What a round did with one row; a store writes it back.

    `retry`: the row stays pending with `attempts + 1` and `error`; `available_at` is when it may
    be tried again (None: with the next round).
    """

    row: PendingRow
    outcome: Outcome
    dispatch_id: str | None = None
    error: str | None = None
    available_at: datetime | None = None


class Claim(Protocol):
    """Rows claimed by one round; `record` writes their results before the claim ends."""

    @property
    def rows(self) -> Sequence[PendingRow]: ...

    def record(self, results: Sequence[RowResult]) -> None: ...


class AsyncClaim(Protocol):
    @property
    def rows(self) -> Sequence[PendingRow]: ...

    async def record(self, results: Sequence[RowResult]) -> None: ...


class OutboxStore(Protocol):
    """Where a relay finds rows: the SQLAlchemy table, or the Django model.

    `locks_rows`: claimed rows are locked (`FOR UPDATE SKIP LOCKED`) until the claim ends, so
    several relays can run; when False (SQLite) a lease lets one relay at a time send.
    """

    @property
    def locks_rows(self) -> bool: ...

    def claim(self, limit: int) -> AbstractContextManager[Claim]: ...

    def take_lease(self, owner: str, ttl: timedelta) -> str | None:
        """Take or renew the relay lease for `owner`: None when held, else who holds it."""
        ...

    def release_lease(self, owner: str) -> None: ...

    def purge_sent(self, before: datetime) -> int: ...


class AsyncOutboxStore(Protocol):
    """`OutboxStore` over an async database driver."""

    @property
    def locks_rows(self) -> bool: ...

    def claim(self, limit: int) -> AbstractAsyncContextManager[AsyncClaim]: ...

    async def take_lease(self, owner: str, ttl: timedelta) -> str | None: ...

    async def release_lease(self, owner: str) -> None: ...

    async def purge_sent(self, before: datetime) -> int: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits that double from `min` to `max`, each reduced by up to half when `jitter` is on."""

    min: timedelta = timedelta(seconds=0.5)
    max: timedelta = timedelta(seconds=30)
    jitter: bool = True

    def wait(self, failures: int) -> timedelta:
        """The wait after the `failures`-th failure in a row (1-based)."""
        base: timedelta = min(self.max, self.min * (1 << max(0, min(failures - 1, 30))))
        if self.jitter:
            base -= base * random.uniform(0, 0.5)
        return base


@dataclass(frozen=True, slots=True)
class RoundReport:
    """What one round did: rows claimed, sent, failed for good, left to retry."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retry: int = 0
    backend_down: bool = False
    standby: bool = False


Send: TypeAlias = Callable[[list[JobRequest[Any]]], list[DispatchReceipt]]
Plan: TypeAlias = Generator[list[JobRequest[Any]], list[DispatchReceipt], list[RowResult]]


def _permanent(error: BaseException) -> bool:
    """An error that sending the same row again cannot cure (its payload, its options)."""
    return isinstance(error, (JobPayloadError, TypeError, ValueError))


class Relay:
    """Sends committed outbox rows through `dispatcher`, the jobs named by `jobs`.

    `dispatcher` is any `JobDispatcherPort` (the configured backend's, or a
    `RecordingDispatcher` in tests): the relay calls only `dispatch_many_sync` (and
    `dispatch_many` over an async database). Make one with `Outbox.relay(...)`.
    """

    def __init__(
        self,
        store: OutboxStore | AsyncOutboxStore,
        dispatcher: JobDispatcherPort,
        jobs: JobRegistry[Any],
        *,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        backoff: Backoff | None = None,
        row_backoff: Backoff | None = None,
        lease_ttl: timedelta = timedelta(seconds=30),
        keep_sent: timedelta | None = timedelta(days=7),
        instrumentation: Instrumentation | None = None,
        is_async: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.store = store
        self.dispatcher = dispatcher
        self.jobs = jobs
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.backoff = backoff or Backoff()
        self.row_backoff = row_backoff or Backoff(timedelta(seconds=1), timedelta(minutes=5))
        self.lease_ttl = lease_ttl
        self.keep_sent = keep_sent
        self.instrumentation = with_logging(instrumentation)
        self.is_async = is_async
        self.one_row_at_a_time = bool(getattr(dispatcher, "runs_jobs_in_dispatch", False))
        """A dispatcher that runs each job inside `dispatch` (inline) gets one row at a time:
        there is no round trip to save, and a job that gives up (`JobFailedError`) is then the
        outcome of its own row alone."""
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.last_round = RoundReport()
        self._backlog_at = -math.inf
        self._stopping = threading.Event()
        self._failed_rounds = 0
        self._holds_lease: bool | None = None
        self._lease_fresh_until = 0.0
        self._last_purge: datetime | None = None

    # -- one round ------------------------------------------------------------------------

    def run_once(self, limit: int | None = None) -> int:
        """Send up to `limit` (default `batch_size`) committed rows; returns how many were sent."""
        if self.is_async:
            raise TypeError(
                "this relay reads the outbox through an async engine: use "
                "`await relay.run_once_async()` / `await relay.run_forever_async()`"
            )
        store: OutboxStore = self.store  # type: ignore[assignment]
        if self._needs_lease():
            if not self._lease_held(store.take_lease(self.owner, self.lease_ttl)):
                return self._finish_round(RoundReport(standby=True))
        with store.claim(limit or self.batch_size) as claim:
            results = _drive(self._plan(claim.rows), self.dispatcher.dispatch_many_sync)
            claim.record(results)
        return self._finish_round(self._report(results))

    async def run_once_async(self, limit: int | None = None) -> int:
        """`run_once` for async code (a sync store runs in a worker thread)."""
        if not self.is_async:
            return await asyncio.to_thread(self.run_once, limit)
        store: AsyncOutboxStore = self.store  # type: ignore[assignment]
        if self._needs_lease():
            if not self._lease_held(await store.take_lease(self.owner, self.lease_ttl)):
                return self._finish_round(RoundReport(standby=True))
        async with store.claim(limit or self.batch_size) as claim:
            results = await _drive_async(self._plan(claim.rows), self.dispatcher.dispatch_many)
            await claim.record(results)
        return self._finish_round(self._report(results))

    # -- running --------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Relay until `stop()` is called: at once while rows wait, every `poll_interval`
        seconds when idle, with a growing backoff while the backend or the database is down."""
        self._stopping.clear()
        try:
            while not self._stopping.is_set():
                try:
                    self.run_once()
                    self._purge_if_due()
                except Exception as error:
                    self._round_crashed(error)
                self._stopping.wait(self._pause())
        finally:
            self.close()

    async def run_forever_async(self) -> None:
        """`run_forever` for async code; cancel the task or call `stop()` to end it."""
        self._stopping.clear()
        try:
            while not self._stopping.is_set():
                try:
                    await self.run_once_async()
                    await self._purge_if_due_async()
                except Exception as error:
                    self._round_crashed(error)
                pause = self._pause()
                deadline = asyncio.get_running_loop().time() + pause
                while not self._stopping.is_set():
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    await asyncio.sleep(min(left, 0.2))
        finally:
            await self.close_async()

    def stop(self) -> None:
        """Ask `run_forever` to return after the round in progress."""
        self._stopping.set()

    def close(self) -> None:
        """Give up the relay lease (SQLite) so another relay takes over at once, not after
        `lease_ttl`; `run_forever` does it when it returns. The relay may run again later."""
        if self._holds_lease:
            if self.is_async:
                raise TypeError("this relay is async: use `await relay.close_async()`")
            store: OutboxStore = self.store  # type: ignore[assignment]
            self._quietly(lambda: store.release_lease(self.owner))
            self._holds_lease = None

    async def close_async(self) -> None:
        """`close` for async code."""
        if not self.is_async:
            await asyncio.to_thread(self.close)
        elif self._holds_lease:
            store: AsyncOutboxStore = self.store  # type: ignore[assignment]
            try:
                await store.release_lease(self.owner)
            except Exception:
                logger.warning("outbox relay: could not release the lease", exc_info=True)
            self._holds_lease = None

    # -- the round's decisions (no I/O: the drivers do the sending) ------------------------

    def _plan(self, rows: Sequence[PendingRow]) -> Plan:
        """Send `rows`: all at once, then one by one if that failed, to find who is to blame."""
        results: list[RowResult] = []
        ready: list[tuple[PendingRow, JobRequest[Any]]] = []
        now = utcnow()
        for row in rows:
            try:
                ready.append((row, self._request(row, now)))
            except Exception as error:
                results.append(self._failed(row, error))
        if len(ready) > 1 and not self.one_row_at_a_time:
            try:
                receipts = yield [request for _, request in ready]
            except Exception as error:
                logger.warning(
                    "outbox: sending %d rows failed (%s); sending them one by one",
                    len(ready),
                    describe_error(error),
                )
            else:
                results += [self._sent(row, r) for (row, _), r in zip(ready, receipts)]
                return results
        suspects: list[tuple[PendingRow, BaseException]] = []
        went_through = False
        for row, request in ready:
            try:
                (receipt,) = yield [request]
            except JobFailedError as error:  # it ran (inline), and gave up: its outcome
                results.append(self._ran_and_gave_up(row, error))
            except Exception as error:
                if _permanent(error):
                    results.append(self._failed(row, error))
                    continue
                suspects.append((row, error))
                if len(suspects) >= 2:
                    break  # two in a row: the backend is down, the rest wait untouched
                continue
            else:
                results.append(self._sent(row, receipt))
            went_through = True
            results += [self._refused(r, e) for r, e in suspects]
            suspects = []
        if suspects and went_through and len(suspects) == 1:
            results += [self._refused(r, e) for r, e in suspects]
        elif suspects:
            results += [RowResult(r, "retry", error=describe_error(e)) for r, e in suspects]
        return results

    def _request(self, row: PendingRow, now: datetime) -> JobRequest[Any]:
        job = self.jobs.get(row.job_name)
        if job is None:
            raise LookupError(
                f"unknown job {row.job_name!r}: it is not in the relay's registry "
                f"(known: {', '.join(self.jobs.names()) or 'none'})"
            )
        payload = validate_payload(job, _stored_payload(row.payload, job.name))
        run_at = row.run_at if row.run_at is not None and row.run_at > now else None
        headers = hooks.carried(row.headers) or None
        return JobRequest(
            job, payload, run_at=run_at, idempotency_key=row.send_key, headers=headers
        )

    def _sent(self, row: PendingRow, receipt: DispatchReceipt) -> RowResult:
        logger.debug(
            "outbox row %s (%s) sent as %s dispatch %s%s",
            row.id,
            row.job_name,
            receipt.backend,
            receipt.dispatch_id,
            " (already sent before: deduplicated)" if receipt.deduplicated else "",
        )
        return RowResult(row, "sent", dispatch_id=receipt.dispatch_id)

    def _ran_and_gave_up(self, row: PendingRow, error: JobFailedError) -> RowResult:
        """The dispatcher ran the row's job inside `dispatch` (inline) and the job gave up: that
        is the job's outcome (recorded as `failed`, its `on_failure` called), not a failure to
        send the row, which is sent."""
        dispatch_id = keyed_dispatch_id(row.job_name, row.send_key)
        logger.debug(
            "outbox row %s (%s) ran as dispatch %s and gave up: %s",
            row.id,
            row.job_name,
            dispatch_id,
            describe_error(error.error),
        )
        return RowResult(row, "sent", dispatch_id=dispatch_id)

    def _failed(self, row: PendingRow, error: BaseException) -> RowResult:
        text = describe_error(error)
        logger.error(
            "outbox row %s (job %s, key %s) can never be sent and is marked failed: %s",
            row.id,
            row.job_name,
            row.key,
            text,
        )
        safe_record(
            self.instrumentation,
            JobEvent("failed", "schedule", row.job_name, row.key, 0, BACKEND, error=text),
        )
        return RowResult(row, "failed", error=text)

    def _refused(self, row: PendingRow, error: BaseException) -> RowResult:
        wait = self.row_backoff.wait(row.attempts + 1)
        logger.warning(
            "outbox row %s (%s) was refused while other rows went through; retrying it in %.1fs: %s",
            row.id,
            row.job_name,
            wait.total_seconds(),
            describe_error(error),
        )
        return RowResult(row, "retry", error=describe_error(error), available_at=utcnow() + wait)

    # -- bookkeeping ----------------------------------------------------------------------

    @staticmethod
    def _report(results: Sequence[RowResult]) -> RoundReport:
        outcomes = [r.outcome for r in results]
        return RoundReport(
            claimed=len(results),
            sent=outcomes.count("sent"),
            failed=outcomes.count("failed"),
            retry=outcomes.count("retry"),
            backend_down=any(r.outcome == "retry" and r.available_at is None for r in results),
        )

    def _finish_round(self, report: RoundReport) -> int:
        self.last_round = report
        if hooks.HOOKS and not self.is_async:
            self._measure_backlog()
        if report.backend_down:
            self._failed_rounds += 1
        elif report.sent:
            if self._failed_rounds:
                logger.warning("outbox: the backend accepts rows again; relaying")
            self._failed_rounds = 0
        return report.sent

    def _measure_backlog(self) -> None:
        """The rows waiting to be sent, as a gauge (with tracing on; counted at most every
        `BACKLOG_EVERY` seconds, as the count reads the table)."""
        now = time.monotonic()
        if now - self._backlog_at < BACKLOG_EVERY:
            return
        self._backlog_at = now
        try:
            pending = self.store.counts().get("pending", 0)  # type: ignore[union-attr]
        except Exception as error:
            logger.debug("outbox: could not count the backlog: %s", error)
            return
        hooks.measure("jobs_core.outbox.backlog", pending, {})

    def _round_crashed(self, error: BaseException) -> None:
        self._failed_rounds += 1
        self.last_round = RoundReport(backend_down=True)
        logger.error("outbox relay round failed: %s", describe_error(error), exc_info=True)

    def _pause(self) -> float:
        report = self.last_round
        if report.backend_down or (self._failed_rounds and not report.sent):
            wait = self.backoff.wait(self._failed_rounds).total_seconds()
            logger.warning("outbox: backend or database unavailable; next round in %.1fs", wait)
            return wait
        if report.standby:
            return max(self.poll_interval, self.lease_ttl.total_seconds() / 3)
        if report.claimed >= self.batch_size:
            return 0.0
        return self.poll_interval

    def _needs_lease(self) -> bool:
        """Whether this round must take or renew the lease (renewed at half its time to live,
        so that most rounds on SQLite need no write besides their own)."""
        if self.store.locks_rows:
            return False
        return not self._holds_lease or time.monotonic() >= self._lease_fresh_until

    def _lease_held(self, holder: str | None) -> bool:
        held = holder is None
        if held:
            self._lease_fresh_until = time.monotonic() + self.lease_ttl.total_seconds() / 2
        if held and self._holds_lease is False:
            logger.warning("outbox relay %s took over the relay lease: relaying", self.owner)
        elif not held and self._holds_lease is not False:
            logger.warning(
                "outbox relay %s is NOT relaying: relay %s holds the lease. This database "
                "(SQLite) cannot lock rows, so one relay at a time sends; this one stands by "
                "and takes over within %ss if that one stops.",
                self.owner,
                holder,
                int(self.lease_ttl.total_seconds()),
            )
        self._holds_lease = held
        return held

    def _purge_due(self) -> datetime | None:
        if self.keep_sent is None:
            return None
        now = utcnow()
        if self._last_purge is not None and now - self._last_purge < timedelta(minutes=10):
            return None
        self._last_purge = now
        return now - self.keep_sent

    def _purge_if_due(self) -> None:
        before = self._purge_due()
        if before is not None and self._holds_lease is not False:
            store: OutboxStore = self.store  # type: ignore[assignment]
            purged = store.purge_sent(before)
            if purged:
                logger.info("outbox: deleted %d rows sent before %s", purged, before)

    async def _purge_if_due_async(self) -> None:
        if not self.is_async:
            await asyncio.to_thread(self._purge_if_due)
            return
        before = self._purge_due()
        if before is not None and self._holds_lease is not False:
            store: AsyncOutboxStore = self.store  # type: ignore[assignment]
            purged = await store.purge_sent(before)
            if purged:
                logger.info("outbox: deleted %d rows sent before %s", purged, before)

    @staticmethod
    def _quietly(action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception:
            logger.warning("outbox relay: cleanup failed", exc_info=True)


def _stored_payload(payload: Any, job_name: str) -> Any:
    """A stored payload as a mapping: some drivers hand JSON columns back as text."""
    if isinstance(payload, (str, bytes, bytearray)):
        import json

        try:
            return json.loads(payload)
        except ValueError as exc:
            raise JobPayloadError(
                job_name, [{"type": "invalid_json", "loc": (), "msg": str(exc)[:200]}]
            ) from None
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    return payload


def _drive(plan: Plan, send: Send) -> list[RowResult]:
    """`_drive_async` for a sync `send`: wrapped as a coroutine that never suspends, the drive
    ends on its first step, with no event loop (one copy of the driving logic)."""

    async def send_now(batch: list[JobRequest[Any]]) -> list[DispatchReceipt]:
        return send(batch)

    results: list[RowResult] = run_without_loop(_drive_async(plan, send_now))
    return results


async def _drive_async(plan: Plan, send: Callable[[list[JobRequest[Any]]], Any]) -> list[RowResult]:
    """Run `plan`, sending each batch it asks for with `send` and giving it back the outcome."""
    try:
        batch = next(plan)
        while True:
            try:
                receipts = await send(batch)
            except Exception as error:
                batch = plan.throw(error)
            else:
                batch = plan.send(receipts)
    except StopIteration as done:
        results: list[RowResult] = done.value
        return results


def serve(relay: Relay) -> None:
    """Run `relay` in the foreground until SIGTERM or SIGINT, which end it after its round."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        logger.info("outbox relay: signal %d, stopping after the current round", signum)
        relay.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if relay.is_async:
            asyncio.run(relay.run_forever_async())
        else:
            relay.run_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
