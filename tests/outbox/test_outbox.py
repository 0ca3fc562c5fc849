"""The outbox and its relay in one process, on SQLite and PostgreSQL (C31–C33).

The relay sends through a `RecordingDispatcher` here (the relay uses only the public port, so
it cannot tell); tests/outbox/test_end_to_end.py runs the same promises with a real Dramatiq
worker and real process kills.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import Engine, create_engine, event, insert, select, update
from sqlalchemy.orm import Session

from jobs_core import DispatchError, JobPayloadError, JobRegistry, JobRequest
from jobs_core.outbox import Backoff, Outbox, outbox_table
from jobs_core.testing import RecordingDispatcher, RecordingInstrumentation
from tests.conformance.harness import wait_until

jobs = JobRegistry[Any]()


class Charge(BaseModel):
    n: int


class Other(BaseModel):
    name: str


@jobs.job("test.charge")
def charge(payload: Charge, ctx: Any) -> None: ...


@jobs.job("test.other")
def other(payload: Other, ctx: Any) -> None: ...


FAST = {"backoff": Backoff(timedelta(milliseconds=10), timedelta(milliseconds=50))}


@pytest.fixture
def outbox(engine: Engine) -> Outbox:
    return Outbox(engine)


def _rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(outbox_table).order_by(outbox_table.c.id)))


def _write(outbox: Outbox, numbers: Sequence[int]) -> list[str]:
    with Session(outbox.engine) as session, session.begin():
        receipts = outbox.dispatcher(session).dispatch_many_sync(
            [(charge, {"n": n}) for n in numbers]
        )
    return [r.dispatch_id for r in receipts]


def _sent_numbers(recording: RecordingDispatcher) -> list[int]:
    return [d.payload.n for d in recording.dispatched]  # type: ignore[attr-defined]


# -- C31: nothing before commit, nothing after rollback ------------------------------------


def test_C31_rollback_writes_nothing_and_commit_writes_pending_rows(outbox: Outbox) -> None:
    recording = RecordingDispatcher()
    relay = outbox.relay(recording, jobs)
    assert relay.run_once() == 0  # (on SQLite: takes the relay lease before the writes below)
    with Session(outbox.engine) as session:
        with session.begin():
            outbox.dispatcher(session).dispatch_sync(charge, {"n": 1})
            session.rollback()
        assert _rows(outbox.engine) == []
        with session.begin():
            receipt = outbox.dispatcher(session).dispatch_sync(charge, {"n": 2})
            # not committed yet: another connection (the relay's) sees nothing
            assert relay.run_once() == 0
    assert receipt.backend == "outbox"
    [row] = _rows(outbox.engine)
    assert (row.status, row.job_name, row.payload, row.key) == (
        "pending",
        "test.charge",
        {"n": 2},
        receipt.dispatch_id,
    )
    assert relay.run_once() == 1
    [sent] = recording.dispatched
    assert sent.payload == Charge(n=2)
    assert sent.prepared.idempotency_key == f"outbox:{receipt.dispatch_id}"
    [row] = _rows(outbox.engine)
    assert (row.status, row.dispatch_id, row.sent_at is not None) == (
        "sent",
        sent.dispatch_id,
        True,
    )
    assert relay.run_once() == 0, "a sent row is not sent again"


def test_C31_an_exception_in_the_transaction_sends_nothing(outbox: Outbox) -> None:
    with pytest.raises(RuntimeError), Session(outbox.engine) as session, session.begin():
        outbox.dispatcher(session).dispatch_many_sync([(charge, {"n": 1}), (charge, {"n": 2})])
        raise RuntimeError("the use case failed after dispatching")
    recording = RecordingDispatcher()
    assert outbox.relay(recording, jobs).run_once() == 0
    assert recording.dispatched == [] and _rows(outbox.engine) == []


# -- validation is every dispatcher's (C4–C6) ----------------------------------------------


def test_C4_C5_C6_validation_as_every_dispatcher(outbox: Outbox) -> None:
    events = RecordingInstrumentation()
    outbox = Outbox(outbox.engine, instrumentation=events)
    with Session(outbox.engine) as session, session.begin():
        dispatcher = outbox.dispatcher(session)
        with pytest.raises(JobPayloadError) as bad:
            dispatcher.dispatch_sync(charge, {"n": "not a number"})
        assert bad.value.job_name == "test.charge" and bad.value.errors[0]["loc"] == ("n",)
        for wrong in (Other(name="x"), [1], None, "n=1"):
            with pytest.raises(JobPayloadError):
                dispatcher.dispatch_sync(charge, wrong)  # type: ignore[arg-type]
        with pytest.raises(JobPayloadError):
            dispatcher.dispatch_many_sync([(charge, {"n": 1}), (charge, {"n": "x"})])
        with pytest.raises(TypeError):
            dispatcher.dispatch_sync("test.charge", {"n": 1})  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            dispatcher.dispatch_sync(charge, {"n": 1}, idempotency_key="")
        with pytest.raises(ValueError):
            dispatcher.dispatch_sync(charge, {"n": 1}, run_at=datetime(2030, 1, 1))
    assert _rows(outbox.engine) == [], "nothing written, even though the transaction committed"
    failed = events.for_job("test.charge")
    assert failed and {(e.kind, e.phase) for e in failed} == {("failed", "schedule")}


# -- options carry over --------------------------------------------------------------------


def test_C27_a_payload_idempotency_key_is_kept_with_the_row(outbox: Outbox) -> None:
    """A job with `idempotency="field"` dispatched through the outbox twice with the same
    value: both rows carry the derived key, so the backend runs it once (as without outbox)."""
    keyed: JobRegistry[Any] = JobRegistry()
    job = keyed.define_job(
        "test.refund", payload=Other, handle=lambda p, c: None, idempotency="name"
    )
    with Session(outbox.engine) as session, session.begin():
        dispatcher = outbox.dispatcher(session)
        dispatcher.dispatch_sync(job, {"name": "refund-7"})
        dispatcher.dispatch_sync(job, {"name": "refund-7"})
        dispatcher.dispatch_sync(job, {"name": "refund-8"}, idempotency_key="explicit")
    recording = RecordingDispatcher()
    assert outbox.relay(recording, keyed).run_once() == 3
    assert [d.prepared.idempotency_key for d in recording.dispatched] == ["refund-7", "explicit"]


def test_options_delay_run_at_and_idempotency_key_carry_over(outbox: Outbox) -> None:
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    with Session(outbox.engine) as session, session.begin():
        dispatcher = outbox.dispatcher(session)
        dispatcher.dispatch_sync(charge, {"n": 1}, delay=timedelta(minutes=10))
        dispatcher.dispatch_sync(charge, {"n": 2}, run_at=later, idempotency_key="charge-2")
        dispatcher.dispatch_many_sync(
            [charge.request({"n": 3}, idempotency_key="charge-3"), (charge, {"n": 4})],
            delay=timedelta(minutes=1),
        )
        past = dispatcher.dispatch_sync(
            charge, {"n": 5}, run_at=datetime.now(timezone.utc) - timedelta(hours=1)
        )
    recording = RecordingDispatcher()
    assert outbox.relay(recording, jobs).run_once() == 5
    sent = {d.payload.n: d.prepared for d in recording.dispatched}  # type: ignore[attr-defined]
    now = datetime.now(timezone.utc)
    assert sent[1].eta is not None and timedelta(minutes=9) < sent[1].eta - now <= timedelta(
        minutes=10
    )
    assert sent[2].eta == later and sent[2].idempotency_key == "charge-2"
    assert sent[3].idempotency_key == "charge-3" and sent[3].eta is not None
    assert sent[4].idempotency_key is not None and sent[4].idempotency_key.startswith("outbox:")
    assert sent[4].eta is not None and sent[4].eta - now <= timedelta(minutes=1)
    assert sent[5].eta is None, "a time already passed runs now"
    assert sent[5].idempotency_key == f"outbox:{past.dispatch_id}"


def test_dispatch_many_is_one_insert_and_a_relay_round_one_send(outbox: Outbox) -> None:
    inserts: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement)

    event.listen(outbox.engine, "before_cursor_execute", count)
    try:
        _write(outbox, range(500))
    finally:
        event.remove(outbox.engine, "before_cursor_execute", count)
    assert len(inserts) == 1, f"{len(inserts)} INSERT statements for one dispatch_many"

    class CountingDispatcher(RecordingDispatcher):
        calls = 0

        def dispatch_many_sync(self, items: Any, **options: Any) -> Any:
            self.calls += 1
            return super().dispatch_many_sync(items, **options)

    recording = CountingDispatcher()
    assert outbox.relay(recording, jobs, batch_size=500).run_once() == 500
    assert recording.calls == 1
    assert _sent_numbers(recording) == list(range(500)), "sent in the order written"


def test_async_engine_and_session(database_url: str) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    url = database_url.replace("sqlite://", "sqlite+aiosqlite://", 1)

    async def scenario() -> tuple[int, list[int]]:
        engine = create_async_engine(url)
        outbox = Outbox(engine)
        await outbox.create_table_async()
        async with AsyncSession(engine) as session:
            async with session.begin():
                dispatcher = outbox.dispatcher(session)
                await dispatcher.dispatch(charge, {"n": 1})
                await dispatcher.dispatch_many([(charge, {"n": 2}), (charge, {"n": 3})])
                with pytest.raises(TypeError, match="await"):
                    dispatcher.dispatch_sync(charge, {"n": 4})
            async with session.begin():
                await outbox.dispatcher(session).dispatch(charge, {"n": 99})
                await session.rollback()
        recording = RecordingDispatcher()
        relay = outbox.relay(recording, jobs)
        with pytest.raises(TypeError, match="run_once_async"):
            relay.run_once()
        sent = await relay.run_once_async()
        sent += await relay.run_once_async()
        counts = await outbox.store.counts()  # type: ignore[misc]
        assert counts == {"pending": 0, "sent": 3, "failed": 0}
        await engine.dispose()
        return sent, _sent_numbers(recording)

    assert asyncio.run(scenario()) == (3, [1, 2, 3])


# -- C33: rows that can never be sent ------------------------------------------------------


def _insert_raw(engine: Engine, job_name: str, payload: Any, key: str) -> None:
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(
            insert(outbox_table).values(
                key=key,
                job_name=job_name,
                payload=payload,
                status="pending",
                attempts=0,
                created_at=now,
                available_at=now,
            )
        )


def test_C33_poison_rows_are_failed_kept_logged_and_block_nothing(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    _write(outbox, [1])
    _insert_raw(outbox.engine, "test.removed", {"n": 2}, "poison-unknown")
    _insert_raw(outbox.engine, "test.charge", {"amount": 3}, "poison-payload")
    _write(outbox, [4, 5])
    events = RecordingInstrumentation()
    recording = RecordingDispatcher()
    relay = outbox.relay(recording, jobs, instrumentation=events)
    with caplog.at_level(logging.ERROR, logger="jobs_core.outbox"):
        sent = relay.run_once()
    assert sent == 3 and _sent_numbers(recording) == [1, 4, 5]
    rows = {row.key: row for row in _rows(outbox.engine)}
    assert rows["poison-unknown"].status == "failed"
    assert "unknown job 'test.removed'" in rows["poison-unknown"].last_error
    assert rows["poison-payload"].status == "failed"
    assert "JobPayloadError" in rows["poison-payload"].last_error
    assert "poison-unknown" in caplog.text and "poison-payload" in caplog.text
    assert [(e.kind, e.phase, e.dispatch_id) for e in events.for_job("test.removed")] == [
        ("failed", "schedule", "poison-unknown")
    ]
    assert relay.run_once() == 0, "failed rows are not retried"
    assert relay.last_round.claimed == 0
    assert outbox.counts() == {"pending": 0, "sent": 3, "failed": 2}

    # once fixed (here: the payload corrected by hand), an operator requeues them
    with outbox.engine.begin() as conn:
        conn.execute(
            update(outbox_table)
            .where(outbox_table.c.key == "poison-payload")
            .values(payload={"n": 3})
        )
    poison_id = rows["poison-payload"].id
    assert outbox.requeue_failed([poison_id]) == 1
    assert relay.run_once() == 1
    assert _sent_numbers(recording)[-1] == 3
    assert outbox.counts() == {"pending": 0, "sent": 4, "failed": 1}


class FlakyDispatcher(RecordingDispatcher):
    """Refuses everything while `down`, and any job whose number is in `refused`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused: set[int] = set()
        self.calls = 0

    def dispatch_many_sync(self, items: Any, **options: Any) -> Any:
        items = list(items)
        self.calls += 1
        numbers = {JobRequest(*i).payload.n if isinstance(i, tuple) else i.payload.n for i in items}
        if self.down or numbers & self.refused:
            raise DispatchError("test.charge", ConnectionError("broker down"))
        return super().dispatch_many_sync(items, **options)


def test_C33_backend_down_rows_wait_with_backoff_then_go(outbox: Outbox) -> None:
    _write(outbox, range(10))
    flaky = FlakyDispatcher()
    flaky.down = True
    relay = outbox.relay(flaky, jobs, **FAST)
    for _ in range(3):
        assert relay.run_once() == 0
        assert relay.last_round.backend_down
    rows = _rows(outbox.engine)
    assert {r.status for r in rows} == {"pending"}
    assert "broker down" in rows[0].last_error and rows[0].attempts == 3
    assert all(r.available_at <= datetime.now(timezone.utc) for r in rows), "no row put aside"
    assert flaky.calls == 3 * 3, "per round: the batch, then the first two rows alone"
    assert [relay.backoff.wait(n) for n in (1, 2, 3, 10)] != []
    assert relay._pause() > 0, "the next round waits"

    flaky.down = False
    assert relay.run_once() == 10
    assert not relay.last_round.backend_down
    assert _sent_numbers(flaky) == list(range(10)), "in order, none lost"


def test_C33_a_row_the_backend_refuses_alone_does_not_hold_up_the_others(outbox: Outbox) -> None:
    _write(outbox, range(6))
    flaky = FlakyDispatcher()
    flaky.refused = {2}
    relay = outbox.relay(flaky, jobs, **FAST)
    assert relay.run_once() == 5
    assert not relay.last_round.backend_down
    assert _sent_numbers(flaky) == [0, 1, 3, 4, 5]
    [row] = [r for r in _rows(outbox.engine) if r.status == "pending"]
    assert row.payload == {"n": 2} and row.attempts == 1 and "broker down" in row.last_error
    assert row.available_at > datetime.now(timezone.utc), "put back with a backoff of its own"


def test_backoff_doubles_to_its_ceiling_with_jitter() -> None:
    plain = Backoff(timedelta(seconds=1), timedelta(seconds=10), jitter=False)
    assert [plain.wait(n).total_seconds() for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    jittered = Backoff(timedelta(seconds=1), timedelta(seconds=10))
    waits = [jittered.wait(3).total_seconds() for _ in range(200)]
    assert min(waits) >= 2 and max(waits) <= 4 and len(set(waits)) > 1


# -- C32: a crash between sending and marking sent -----------------------------------------


def test_C32_relay_dies_before_marking_sent_resends_once_deduplicated(outbox: Outbox) -> None:
    _write(outbox, range(5))
    recording = RecordingDispatcher()  # its idempotency store outlives the "crash"

    class DiesAfterSending:
        """The relay's process dying right after the backend accepted the batch."""

        def dispatch_many_sync(self, items: Any, **options: Any) -> Any:
            recording.dispatch_many_sync(items, **options)
            raise SystemExit("killed")  # not an Exception: the round's transaction unwinds

    dead = outbox.relay(DiesAfterSending(), jobs)  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        dead.run_once()
    assert {r.status for r in _rows(outbox.engine)} == {"pending"}
    first_ids = [d.dispatch_id for d in recording.dispatched]
    assert len(first_ids) == 5

    if outbox.engine.dialect.name == "sqlite":  # the dead relay's lease must expire first
        outbox.store.release_lease(dead.owner)  # type: ignore[union-attr]
    assert outbox.relay(recording, jobs).run_once() == 5
    assert len(recording.dispatched) == 5, "the backend saw each job once"
    assert [r.dispatch_id for r in _rows(outbox.engine)] == first_ids, (
        "the resend was deduplicated to the first send's dispatch"
    )


# -- several relays ------------------------------------------------------------------------


def test_C33_concurrent_relays_send_each_row_once(engine: Engine, database_url: str) -> None:
    outbox = Outbox(engine)
    total = 2000
    _write(outbox, range(total))
    dispatchers = [RecordingDispatcher() for _ in range(3)]
    relays = [outbox.relay(d, jobs, batch_size=50, **FAST) for d in dispatchers]
    start = threading.Barrier(len(relays))

    def drain(relay: Any) -> None:
        start.wait()
        idle = 0
        while idle < 3:
            idle = idle + 1 if relay.run_once() == 0 else 0

    threads = [threading.Thread(target=drain, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    sent = [n for d in dispatchers for n in _sent_numbers(d)]
    assert sorted(sent) == list(range(total)), "every row sent exactly once"
    shares = [len(d.dispatched) for d in dispatchers]
    if database_url.startswith("postgresql"):
        assert sum(1 for s in shares if s) >= 2, f"the relays shared the rows: {shares}"
    else:
        assert sorted(shares)[:2] == [0, 0], f"SQLite: one relay at a time: {shares}"


def test_sqlite_second_relay_stands_by_loudly_then_takes_over(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'lease.db'}")
    outbox = Outbox(engine)
    outbox.create_table()
    _write(outbox, [1])
    first, second = RecordingDispatcher(), RecordingDispatcher()
    ttl = timedelta(seconds=1)
    relay_a = outbox.relay(first, jobs, lease_ttl=ttl)
    relay_b = outbox.relay(second, jobs, lease_ttl=ttl)
    assert relay_a.run_once() == 1
    _write(outbox, [2])
    with caplog.at_level(logging.WARNING, logger="jobs_core.outbox"):
        assert relay_b.run_once() == 0
        assert relay_b.last_round.standby
    assert "is NOT relaying" in caplog.text and relay_a.owner in caplog.text
    assert second.dispatched == []
    # relay A dies without releasing its lease: B takes over once the lease expires (its
    # rounds until then stand by), within the lease's time to live
    import time

    started, sent = time.monotonic(), [0]

    def took_over() -> bool:
        sent[0] = relay_b.run_once()
        return sent[0] > 0

    with caplog.at_level(logging.WARNING, logger="jobs_core.outbox"):
        wait_until(took_over, timeout=ttl.total_seconds() + 5, what="B to take the lease over")
    assert sent[0] == 1 and time.monotonic() - started <= ttl.total_seconds() + 1
    assert "took over" in caplog.text
    assert _sent_numbers(second) == [2]
    engine.dispose()


def test_run_forever_stops_releases_its_lease_and_purges_old_sent_rows(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'forever.db'}")
    outbox = Outbox(engine)
    outbox.create_table()
    _write(outbox, [1, 2])
    with engine.begin() as conn:  # one row sent long ago
        conn.execute(
            update(outbox_table)
            .where(outbox_table.c.payload["n"].as_integer() == 1)
            .values(status="sent", sent_at=datetime.now(timezone.utc) - timedelta(days=30))
        )
    recording = RecordingDispatcher()
    relay = outbox.relay(recording, jobs, poll_interval=0.05)
    thread = threading.Thread(target=relay.run_forever)
    thread.start()
    try:
        deadline = datetime.now(timezone.utc) + timedelta(seconds=10)
        while outbox.counts() != {"pending": 0, "sent": 1, "failed": 0}:
            assert datetime.now(timezone.utc) < deadline, outbox.counts()
    finally:
        relay.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert _sent_numbers(recording) == [2]
    other = outbox.relay(RecordingDispatcher(), jobs)
    other.run_once()
    assert not other.last_round.standby, "the stopped relay released its lease"
    engine.dispose()


# -- instrumentation and the command -------------------------------------------------------


def test_the_rows_journey_in_the_instrumentation(outbox: Outbox) -> None:
    written = RecordingInstrumentation()
    sent_events = RecordingInstrumentation()
    outbox = Outbox(outbox.engine, instrumentation=written)
    with Session(outbox.engine) as session, session.begin():
        receipt = outbox.dispatcher(session).dispatch_sync(charge, {"n": 1})
    assert written.events == [], "writing the row is not scheduling the job"
    recording = RecordingDispatcher(instrumentation=sent_events)
    outbox.relay(recording, jobs).run_once()
    [row] = _rows(outbox.engine)
    [scheduled] = sent_events.for_job("test.charge")
    assert (scheduled.kind, scheduled.phase, scheduled.backend) == (
        "scheduled",
        "schedule",
        "recording",
    )
    assert scheduled.dispatch_id == row.dispatch_id, "the row keeps the backend's dispatch id"
    assert row.key == receipt.dispatch_id, "and the outbox receipt's id is the row's key"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs_core", "relay", "tests.outbox.test_outbox:jobs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "JOBS_BACKEND": "inline"},
    )


@pytest.mark.parametrize("driver", ["sqlite", "sqlite+aiosqlite"])
def test_relay_command_once_create_table_and_requeue(tmp_path: Any, driver: str) -> None:
    url = f"{driver}:///{tmp_path / 'cli.db'}"
    done = _cli("--database-url", url, "--create-table", "--once")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"sent": 0}
    engine = create_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    outbox = Outbox(engine)
    _write(outbox, [1, 2])
    _insert_raw(engine, "test.gone", {"n": 3}, "gone")
    done = _cli("--database-url", url, "--once")
    assert json.loads(done.stdout) == {"sent": 2}, done.stderr
    assert "unknown job 'test.gone'" in done.stderr
    done = _cli("--database-url", url, "--requeue-failed")
    assert json.loads(done.stdout) == {"requeued": 1}
    assert outbox.counts() == {"pending": 1, "sent": 2, "failed": 0}
    engine.dispose()


def test_relay_command_without_a_database_says_so() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobs_core", "relay", "tests.outbox.test_outbox:jobs"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "JOBS_DATABASE_URL"},
    )
    assert done.returncode == 2
    assert "no database: pass --database-url or set JOBS_DATABASE_URL" in done.stderr


def test_a_scoped_session_as_flask_sqlalchemy_gives_works_as_is(outbox: Outbox) -> None:
    from sqlalchemy.orm import scoped_session, sessionmaker

    db_session = scoped_session(sessionmaker(outbox.engine))  # what `db.session` is
    try:
        outbox.dispatcher(db_session).dispatch_sync(charge, {"n": 1})
        db_session.rollback()
        outbox.dispatcher(db_session).dispatch_sync(charge, {"n": 2})
        db_session.commit()
    finally:
        db_session.remove()
    recording = RecordingDispatcher()
    assert outbox.relay(recording, jobs).run_once() == 1
    assert _sent_numbers(recording) == [2]


def test_async_relay_runs_forever_until_stopped(tmp_path: Any) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    async def scenario() -> list[int]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'forever.db'}")
        outbox = Outbox(engine)
        await outbox.create_table_async()
        sync_engine = create_engine(f"sqlite:///{tmp_path / 'forever.db'}")
        _write(Outbox(sync_engine), [1, 2, 3])
        recording = RecordingDispatcher()
        relay = outbox.relay(recording, jobs, poll_interval=0.05)
        task = asyncio.create_task(relay.run_forever_async())
        for _ in range(200):
            if len(recording.dispatched) == 3:
                break
            await asyncio.sleep(0.05)
        relay.stop()
        await asyncio.wait_for(task, 10)
        other = outbox.relay(RecordingDispatcher(), jobs)
        await other.run_once_async()
        assert not other.last_round.standby, "the stopped relay gave its lease back"
        sync_engine.dispose()
        await engine.dispose()
        return _sent_numbers(recording)

    assert asyncio.run(scenario()) == [1, 2, 3]
