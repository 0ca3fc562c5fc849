"""Events outside the conformance suite: how they are defined and refused, the outbox and the
recording dispatcher sending them, and JOB_FAILED's guard against loops."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from jobs_core import (
    JOB_FAILED,
    DispatchArgumentError,
    JobConfigError,
    JobFailed,
    JobRegistry,
    Payload,
    PermanentError,
    Retry,
    StepError,
    Steps,
)
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.outbox import Outbox
from jobs_core.testing import RecordingDispatcher, RecordingInstrumentation


class Placed(Payload):
    order_id: str


class Other(Payload):
    n: int


def test_an_event_is_defined_once_with_a_sound_name_and_model() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    placed = jobs.event("shop/order.placed", Placed)
    assert placed.name == "shop/order.placed" and placed.model is Placed
    with pytest.raises(JobConfigError, match="already defined"):
        jobs.event("shop/order.placed", Placed)
    for bad in ("", " spaced", "inngest/mine", "x" * 256, 7):
        with pytest.raises(JobConfigError, match="event name"):
            jobs.event(bad, Placed)  # type: ignore[arg-type]
    with pytest.raises(JobConfigError, match="BaseModel"):
        jobs.event("shop/not.a.model", dict)  # type: ignore[type-var]
    with pytest.raises(JobConfigError, match="already defined"):
        jobs.event(JOB_FAILED.name, JobFailed)


def test_a_job_on_an_event_takes_its_model_and_its_registry() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    other: JobRegistry[Any] = JobRegistry()
    placed = jobs.event("shop/order.placed", Placed)
    foreign = other.event("shop/order.placed", Placed)
    with pytest.raises(JobConfigError, match="payload model must be that model, not Other"):
        jobs.define_job("wrong.model", handle=lambda o, ctx: None, payload=Other, on=placed)
    with pytest.raises(JobConfigError, match="not defined in this registry"):
        jobs.define_job("wrong.registry", handle=lambda o, ctx: None, on=foreign)
    with pytest.raises(JobConfigError, match="on= takes an Event"):
        jobs.define_job("not.an.event", handle=lambda o, ctx: None, on="shop/order.placed")  # type: ignore[arg-type]
    job = jobs.define_job("right", handle=lambda o, ctx: None, on=placed)  # model from event
    assert job.payload_model is Placed and placed.jobs == (job,)
    assert jobs.jobs_on(JOB_FAILED) == ()


def test_job_failed_is_sent_by_jobs_core_only() -> None:
    with pytest.raises(DispatchArgumentError, match="JOB_FAILED is sent by jobs_core"):
        InlineDispatcher().send_sync(
            JOB_FAILED, {"job_name": "x", "dispatch_id": None, "attempt": 0, "error": "e"}
        )


def test_a_listener_of_job_failed_that_fails_sends_no_job_failed() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    alerts: list[str] = []

    def alert(failed: JobFailed, ctx: None) -> None:
        alerts.append(failed.job_name)
        raise PermanentError("the alerting service is down")

    jobs.define_job("ops.alert", handle=alert, on=JOB_FAILED)

    @jobs.job("doomed", retry=Retry(attempts=0))
    def doomed(o: Placed, ctx: None) -> None:
        raise PermanentError("no")

    InlineDispatcher(raise_on_failure=False).dispatch_sync(doomed, {"order_id": "o"})
    assert alerts == ["doomed"]  # the alert's own give-up did not alert again


def test_the_outbox_writes_one_row_per_triggered_job(tmp_path: Path) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    placed = jobs.event("shop/order.placed", Placed)
    jobs.define_job("orders.email", handle=lambda o, ctx: None, on=placed)
    jobs.define_job("orders.crm", handle=lambda o, ctx: None, on=placed)
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    outbox = Outbox(engine)
    outbox.create_table()
    with Session(engine) as session, session.begin():
        receipt = outbox.dispatcher(session).send_sync(placed, {"order_id": "o-1"}, id="o-1")
    assert receipt.jobs == ("orders.email", "orders.crm") and len(receipt.dispatches) == 2
    assert outbox.counts()["pending"] == 2
    recorder = RecordingDispatcher()
    recorded = outbox.relay(recorder, jobs).run_once()
    assert recorded == 2
    assert sorted(d.job_name for d in recorder.dispatched) == ["orders.crm", "orders.email"]


def test_the_recording_dispatcher_records_each_triggered_job() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    placed = jobs.event("shop/order.placed", Placed)
    ran: list[str] = []
    email = jobs.define_job("orders.email", handle=lambda o, ctx: ran.append(o.order_id), on=placed)
    recorder = RecordingDispatcher()
    recorder.send_sync(placed, Placed(order_id="o-9"))
    recorder.assert_dispatched(email, {"order_id": "o-9"})
    recorder.run_all(context=None)
    assert ran == ["o-9"]


def test_steps_that_need_a_dispatcher_say_so_where_the_worker_has_none() -> None:
    from jobs_core.steps.engine import EngineSteps, StepsRun
    from jobs_core.steps.store import MemoryStepStore

    jobs: JobRegistry[Any] = JobRegistry()
    placed = jobs.event("shop/order.placed", Placed)

    @jobs.job("emitter")
    async def emitter(o: Placed, ctx: None, step: Steps) -> None: ...

    run = StepsRun(emitter, "run-1", MemoryStepStore(), lambda *a, **k: None)
    steps = EngineSteps(run, Placed(order_id="o"))
    import asyncio

    with pytest.raises(BaseException) as ended:
        asyncio.run(steps.send_event("emit", placed, {"order_id": "o"}))
    assert "no dispatcher" in str(ended.value.__cause__ or ended.value)
    with pytest.raises(StepError, match="whole number of seconds"):
        asyncio.run(
            steps.wait_for_event("w", placed, match="order_id", timeout=timedelta(milliseconds=500))
        )


def test_inline_wait_resumes_in_process_and_events_record_the_same_kinds() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    approved = jobs.event("shop/order.approved", Placed)
    got: list[Any] = []

    @jobs.job("approve")
    async def approve(o: Placed, ctx: None, step: Steps) -> None:
        got.append(
            await step.wait_for_event("w", approved, match="order_id", timeout=timedelta(hours=1))
        )

    events = RecordingInstrumentation()
    dispatcher = InlineDispatcher(instrumentation=events)
    dispatcher.dispatch_sync(approve, {"order_id": "o-1"})  # parks: returns at once
    assert got == []
    dispatcher.send_sync(approved, {"order_id": "o-1"})
    assert got == [Placed(order_id="o-1")]
    assert [e.kind for e in events if e.phase == "execute"] == [
        "started",
        "run.suspended",
        "run.resumed",
        "completed",
    ]
    dispatcher.close()
