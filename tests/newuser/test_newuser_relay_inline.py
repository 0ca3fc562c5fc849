"""Item 1: the outbox relay on the inline backend runs every row, and a job that gives up is that
job's outcome (recorded, its `on_failure` called), not a failure to send the rows behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from jobs_core import JobFailedError, JobRegistry, PermanentError
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.outbox import Outbox
from jobs_core.testing import RecordingInstrumentation


class Item(BaseModel):
    text: str


def make_jobs() -> tuple[JobRegistry[Any], list[str], list[str], Any, Any]:
    jobs = JobRegistry()
    ran: list[str] = []
    hooked: list[str] = []

    def gave_up(error: BaseException, payload: Any, ctx: Any) -> None:
        hooked.append(f"{payload.text}: {error}")

    @jobs.job("newuser.ok")
    def ok(payload: Item) -> None:
        ran.append(payload.text)

    @jobs.job("newuser.fails", on_failure=gave_up)
    def fails(payload: Item) -> None:
        ran.append(payload.text)
        raise PermanentError("card declined")

    return jobs, ran, hooked, ok, fails


def test_the_relay_runs_every_row_on_inline_and_a_give_up_is_the_jobs_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs, ran, hooked, ok, fails = make_jobs()
    engine = create_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    outbox = Outbox(engine)
    outbox.create_table()
    with Session(engine) as session, session.begin():  # four rows, one transaction
        writer = outbox.dispatcher(session)
        writer.dispatch_sync(ok, {"text": "ok 1"})
        writer.dispatch_sync(fails, {"text": "fails 2"})
        writer.dispatch_sync(ok, {"text": "ok 3"})
        writer.dispatch_sync(ok, {"text": "ok 4"})

    recording = RecordingInstrumentation()
    relay = outbox.relay(InlineDispatcher(context=None, instrumentation=recording), jobs)
    assert relay.run_once() == 4
    print("ran:", ran)

    assert capsys.readouterr().out == "ran: ['ok 1', 'fails 2', 'ok 3', 'ok 4']\n"
    assert outbox.counts() == {"pending": 0, "sent": 4, "failed": 0}
    assert hooked == ["fails 2: card declined"]  # on_failure ran, once
    failed = [e for e in recording.events if e.kind == "failed"]
    assert [(e.job_name, e.phase) for e in failed] == [("newuser.fails", "execute")]
    assert relay.run_once() == 0  # nothing left behind to send (or to run) again
    assert ran == ["ok 1", "fails 2", "ok 3", "ok 4"]
    engine.dispose()


async def test_the_async_relay_runs_every_row_on_inline(tmp_path: Path) -> None:
    jobs, ran, hooked, ok, fails = make_jobs()
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    outbox = Outbox(engine)
    await outbox.create_table_async()
    async with AsyncSession(engine) as session, session.begin():
        writer = outbox.dispatcher(session)
        for job, text in [(ok, "ok 1"), (fails, "fails 2"), (ok, "ok 3"), (ok, "ok 4")]:
            await writer.dispatch(job, {"text": text})

    relay = outbox.relay(InlineDispatcher(context=None), jobs)
    assert await relay.run_once_async() == 4
    assert ran == ["ok 1", "fails 2", "ok 3", "ok 4"]
    assert hooked == ["fails 2: card declined"]
    await engine.dispose()


def test_dispatch_many_on_inline_runs_every_job_then_raises_the_give_up() -> None:
    """What the relay relies on, and what a durable backend does: a give-up does not cancel the
    jobs dispatched with it (their idempotency keys are claimed: they must run)."""
    _, ran, _, ok, fails = make_jobs()
    dispatcher = InlineDispatcher(context=None)
    batch = [
        ok.request({"text": "ok 1"}, idempotency_key="1"),
        fails.request({"text": "fails 2"}, idempotency_key="2"),
        ok.request({"text": "ok 3"}, idempotency_key="3"),
    ]
    with pytest.raises(JobFailedError, match=r"newuser\.fails"):
        dispatcher.dispatch_many_sync(batch)
    assert ran == ["ok 1", "fails 2", "ok 3"]
    again = dispatcher.dispatch_sync(ok, {"text": "ok 3"}, idempotency_key="3")
    assert again.deduplicated and ran == ["ok 1", "fails 2", "ok 3"]  # it ran: its key holds


async def test_async_dispatch_many_on_inline_runs_every_job_then_raises() -> None:
    _, ran, _, ok, fails = make_jobs()
    dispatcher = InlineDispatcher(context=None)
    with pytest.raises(JobFailedError, match=r"newuser\.fails"):
        await dispatcher.dispatch_many([(fails, {"text": "fails 1"}), (ok, {"text": "ok 2"})])
    assert ran == ["fails 1", "ok 2"]
