"""The step API's rules outside the conformance suite: the real step limit, how a job with steps
is defined, where a worker keeps steps (and when it refuses to start), a step store that fails,
and the testing helpers running jobs with steps."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobs_core import (
    JobConfigError,
    JobFailedError,
    JobRegistry,
    Payload,
    Retry,
    StepError,
    Steps,
    StepsSync,
)
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.steps import engine, rules
from jobs_core.steps.redis_store import RedisStepStore
from jobs_core.steps.sql_store import SqlStepStore
from jobs_core.steps.store import MemoryStepStore
from jobs_core.steps.stores import step_store_at, step_store_for
from jobs_core.testing import RecordingDispatcher, RecordingInstrumentation
from tests.support.faults import fails_once


class Order(Payload):
    order_id: int


def test_a_run_takes_at_most_1000_steps() -> None:
    assert rules.MAX_STEPS == 1_000
    jobs: JobRegistry[Any] = JobRegistry()
    ran: list[int] = []

    @jobs.job("limits.many")
    def many(order: Order, ctx: None, step: StepsSync) -> None:
        for i in range(order.order_id):
            step.run(f"s{i}", ran.append, i)

    dispatcher = InlineDispatcher(raise_on_failure=True)
    dispatcher.dispatch_sync(many, {"order_id": 1_000})
    assert len(ran) == 1_000
    with pytest.raises(JobFailedError) as failed:
        dispatcher.dispatch_sync(many, {"order_id": 1_001})
    assert isinstance(failed.value.error, StepError)
    assert "at most 1000 steps" in str(failed.value.error) and "'s1000'" in str(failed.value.error)


@pytest.mark.parametrize("asynchronous", [True, False])
def test_a_third_parameter_must_be_the_step_parameter_of_its_kind(asynchronous: bool) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    if asynchronous:

        async def wrong(order: Order, ctx: None, step: StepsSync) -> None: ...

        async def right(order: Order, ctx: None, step: Steps) -> None: ...

    else:

        def wrong(order: Order, ctx: None, step: Steps) -> None:  # type: ignore[misc]
            ...

        def right(order: Order, ctx: None, step: StepsSync) -> None:  # type: ignore[misc]
            ...

    with pytest.raises(JobConfigError, match="third parameter 'step' must be annotated"):
        jobs.define_job("rules.wrong", handle=wrong)
    assert jobs.define_job("rules.right", handle=right).takes_steps
    plain = jobs.define_job("rules.plain", handle=lambda order, ctx: None, payload=Order)
    assert not plain.takes_steps


def test_a_worker_keeps_steps_where_the_settings_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resources: Any
) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    assert step_store_for(jobs, "celery", broker_url="amqp://x") is None  # no job has steps

    @jobs.job("where.steps")
    def with_steps(order: Order, ctx: None, step: StepsSync) -> None: ...

    redis_url = resources.redis_url(5)
    monkeypatch.delenv("JOBS_STEP_STORE_URL", raising=False)
    assert isinstance(step_store_for(jobs, "celery", broker_url=redis_url), RedisStepStore)
    with pytest.raises(JobConfigError, match=r"'where\.steps'.*JOBS_STEP_STORE_URL"):
        step_store_for(jobs, "celery", broker_url="amqp://guest:secret@rabbit//")
    monkeypatch.setenv("JOBS_STEP_STORE_URL", f"sqlite:///{tmp_path / 'steps.db'}")
    sql = step_store_for(jobs, "celery", broker_url="amqp://guest:secret@rabbit//")
    assert isinstance(sql, SqlStepStore)
    assert sql.save("run", "s:a", "1") == "1"  # its table was created
    for bad in ("postgresql+asyncpg://u@h/db", "nonsense://x", "not a url"):
        with pytest.raises(JobConfigError, match="JOBS_STEP_STORE_URL"):
            step_store_at(bad)


def test_a_celery_worker_on_rabbitmq_with_a_steps_job_and_no_store_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs_core.backends.celery import create_celery_app

    monkeypatch.delenv("JOBS_STEP_STORE_URL", raising=False)
    jobs: JobRegistry[Any] = JobRegistry()

    @jobs.job("refused.steps")
    async def with_steps(order: Order, ctx: None, step: Steps) -> None: ...

    with pytest.raises(JobConfigError, match="nowhere to keep them"):
        create_celery_app(jobs, broker_url="amqp://guest:guest@127.0.0.1:1//")


class _FlakyStore(MemoryStepStore):
    """Fails its first `failures` writes, as a step store that is briefly away would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def save(self, run_id: str, key: str, value: str) -> str:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store away")
        return super().save(run_id, key, value)


def test_a_step_store_that_fails_delays_the_run_and_loses_no_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "STORE_AWAY", timedelta(milliseconds=10))
    jobs: JobRegistry[Any] = JobRegistry()
    ran: list[str] = []

    @jobs.job("flaky.store", retry=Retry(attempts=0))
    def job(order: Order, ctx: None, step: StepsSync) -> None:
        step.run("a", ran.append, "a")
        step.run("b", ran.append, "b")

    dispatcher = InlineDispatcher(instrumentation=RecordingInstrumentation())
    dispatcher.steps = _FlakyStore(failures=2)
    dispatcher.dispatch_sync(job, {"order_id": 1})
    # "a" ran, its save failed twice: run again (at least once), then kept; no attempt counted
    assert ran == ["a", "a", "a", "b"]


def test_run_all_runs_jobs_with_steps_and_a_test_can_fail_a_chosen_step() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    charged: list[int] = []
    mails = {"fail": 1}

    def charge(order_id: int) -> str:
        charged.append(order_id)
        return f"ch_{order_id}"

    def send_receipt(charge_id: str) -> None:
        if mails["fail"]:
            mails["fail"] -= 1
            raise ConnectionError("mail server down")

    @jobs.job("orders.fulfil", retry=Retry(attempts=2))
    async def fulfil(order: Order, ctx: None, step: Steps) -> None:
        charge_id = await step.run("charge", charge, order.order_id)
        await step.sleep("cool-off", timedelta(hours=24))
        await step.run("receipt", send_receipt, charge_id)

    events = RecordingInstrumentation()
    recorder = RecordingDispatcher(instrumentation=events)
    recorder.dispatch_sync(fulfil, {"order_id": 7})
    assert recorder.run_all(context=None) == 1
    assert charged == [7]  # the receipt's retry did not charge the card again
    steps = [(e.kind, e.step_id) for e in events if e.kind.startswith("step.")]
    assert steps == [
        ("step.started", "charge"),
        ("step.completed", "charge"),
        ("step.started", "receipt"),
        ("step.failed", "receipt"),
        ("step.started", "receipt"),
        ("step.completed", "receipt"),
    ]


class _CountingStore(MemoryStepStore):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.saves = 0

    def load(self, run_id: str) -> dict[str, str]:
        self.loads += 1
        return super().load(run_id)

    def save(self, run_id: str, key: str, value: str) -> str:
        self.saves += 1
        return super().save(run_id, key, value)


def test_one_store_read_per_delivery_and_one_write_per_completed_step() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    flaky = fails_once("once")

    @jobs.job("counting.steps", retry=Retry(attempts=1))
    def job(order: Order, ctx: None, step: StepsSync) -> None:
        for i in range(10):
            step.run(f"s{i}", int, i)
        step.run("flaky", flaky)

    dispatcher = InlineDispatcher()
    dispatcher.steps = counting = _CountingStore()
    dispatcher.dispatch_sync(job, {"order_id": 1})
    assert counting.loads == 2  # two deliveries: the failed attempt of "flaky", its retry
    assert counting.saves == 11  # one per completed step
