"""C40–C44: typed events, fan-out, and the failure event, the same on every backend."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from jobs_core import (
    JOB_FAILED,
    JobFailed,
    JobPayloadError,
    JobRegistry,
    Payload,
    PermanentError,
    Retry,
    StepError,
    StepFailedError,
    Steps,
)
from jobs_core.testing import RecordingInstrumentation
from tests.support.faults import fails_once

from .harness import BackendHarness, stays_false, wait_until
from .models import Note, Runs

FAST = dict(min_backoff=timedelta(milliseconds=20), max_backoff=timedelta(milliseconds=50))


def _ended(events: RecordingInstrumentation, name: str) -> bool:
    return any(e.kind in ("completed", "failed") for e in events.for_job(name))


def _executed(events: RecordingInstrumentation, name: str) -> list[str]:
    return [e.kind for e in events.for_job(name) if e.phase == "execute"]


def test_C40_every_job_on_an_event_runs_once_per_event_with_its_data(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    placed = jobs.event(f"shop/order.placed.{unique}", Note)
    email, crm = Runs(), Runs()
    jobs.define_job(f"c40.email.{unique}", handle=lambda n, ctx: email.add(n), on=placed)
    jobs.define_job(f"c40.crm.{unique}", handle=lambda n, ctx: crm.add(n), on=placed)
    with harness.session(jobs, context=None, instrumentation=events) as s:
        first = s.dispatcher.send_sync(placed, {"text": "o-1", "n": 1})
        second = s.dispatcher.send_sync(placed, Note(text="o-2", n=2))
        wait_until(lambda: email.count == 2 and crm.count == 2, what="both jobs, twice")
        assert stays_false(lambda: email.count > 2 or crm.count > 2, 0.3 if harness.durable else 0)
    assert sorted(email.items, key=lambda n: n.n) == [Note(text="o-1", n=1), Note(text="o-2", n=2)]
    assert sorted(crm.items, key=lambda n: n.n) == sorted(email.items, key=lambda n: n.n)
    for receipt in (first, second):
        assert receipt.event_name == placed.name
        assert receipt.jobs == (f"c40.email.{unique}", f"c40.crm.{unique}")
        assert not receipt.deduplicated
    assert first.event_id != second.event_id


def test_C40_an_event_id_runs_each_job_once_within_24h(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    signup = jobs.event(f"user/signup.completed.{unique}", Note)
    runs = Runs()
    jobs.define_job(
        f"c40id.welcome.{unique}", handle=lambda n, ctx: runs.add(("w", n.text)), on=signup
    )
    jobs.define_job(
        f"c40id.trial.{unique}", handle=lambda n, ctx: runs.add(("t", n.text)), on=signup
    )
    with harness.session(jobs, context=None, instrumentation=events) as s:
        receipts = [
            s.dispatcher.send_sync(signup, {"text": "ada"}, id="signup-ada") for _ in range(3)
        ]
        s.dispatcher.send_sync(signup, {"text": "bob"}, id="signup-bob")
        wait_until(lambda: runs.count >= 4, what="one run per job and id")
        assert stays_false(lambda: runs.count > 4, 0.5 if harness.durable else 0)
    assert sorted(runs.items) == [("t", "ada"), ("t", "bob"), ("w", "ada"), ("w", "bob")]
    assert {r.event_id for r in receipts} == {"signup-ada"}
    if harness.name != "inngest" and not harness.name.startswith("inngest"):
        assert [r.deduplicated for r in receipts] == [False, True, True]  # Inngest cannot say


def test_C40_send_validates_the_data_first_and_sends_nothing_on_bad_data(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    placed = jobs.event(f"shop/order.placed.{unique}", Note)
    runs = Runs()
    jobs.define_job(f"c40bad.{unique}", handle=lambda n, ctx: runs.add(n), on=placed)
    with harness.session(jobs, context=None, instrumentation=events) as s:
        before = s.enqueued_count()
        for bad in ({"n": 1}, {"text": "x", "n": "many"}, ["not", "a", "mapping"]):
            with pytest.raises(JobPayloadError, match=f"event '{placed.name}'"):
                s.dispatcher.send_sync(placed, bad)  # type: ignore[arg-type]
        with pytest.raises(JobPayloadError):
            s.dispatcher.send_many_sync([(placed, {"text": "good"}), (placed, {"n": 2})])
        assert s.enqueued_count() == before
        assert stays_false(lambda: runs.count > 0, 0.3 if harness.durable else 0)


def test_C40_a_job_on_an_event_can_be_dispatched_and_an_event_may_trigger_nothing(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    placed = jobs.event(f"shop/order.placed.{unique}", Note)
    unheard = jobs.event(f"shop/nobody.listens.{unique}", Note)
    runs = Runs()
    job = jobs.define_job(f"c40d.{unique}", handle=lambda n, ctx: runs.add(n.text), on=placed)
    with harness.session(jobs, context=None, instrumentation=events) as s:
        s.dispatcher.dispatch_sync(job, {"text": "dispatched"})
        receipt = s.dispatcher.send_sync(unheard, {"text": "into the void"})
        wait_until(lambda: runs.count == 1, what="the dispatched run")
    assert runs.items == ["dispatched"]
    assert receipt.jobs == () and receipt.event_name == unheard.name


def test_C44_a_job_that_gives_up_sends_job_failed_once(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    alerts = Runs()
    jobs.define_job(f"c44.alert.{unique}", handle=lambda f, ctx: alerts.add(f), on=JOB_FAILED)

    def doomed(n: Note, ctx: Any) -> None:
        raise PermanentError(f"card declined for {n.text}")

    job = jobs.define_job(
        f"c44.charge.{unique}", handle=doomed, payload=Note, retry=Retry(attempts=0)
    )
    with harness.session(jobs, context=None, instrumentation=events) as s:
        receipt = s.dispatcher.dispatch_sync(job, {"text": "secret-card-number"})
        wait_until(lambda: alerts.count == 1, 30, what="the JOB_FAILED alert")
        assert stays_false(lambda: alerts.count > 1, 0.5 if harness.durable else 0)
    [failed] = alerts.items
    assert isinstance(failed, JobFailed)
    assert failed.job_name == job.name
    assert failed.dispatch_id == receipt.dispatch_id
    assert failed.error.startswith("PermanentError: card declined")
    assert set(JobFailed.model_fields) == {"job_name", "dispatch_id", "attempt", "error"}  # C23


# -- C41-C43: events inside a run (steps) ----------------------------------------------------


class Approval(Payload):
    text: str
    approver: str = "ops"


def test_C41_an_event_sent_from_a_run_is_sent_once_however_often_it_is_replayed(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    created = jobs.event(f"shop/order.created.{unique}", Note)
    heard, ids = Runs(), Runs()
    flaky = fails_once("replay the run")
    jobs.define_job(f"c41.listener.{unique}", handle=lambda n, ctx: heard.add(n.text), on=created)

    @jobs.job(f"c41.emitter.{unique}", retry=Retry(attempts=2, **FAST))
    async def emitter(order: Note, ctx: Any, step: Steps) -> None:
        ids.add(await step.send_event("emit-created", created, {"text": order.text}))
        await step.run("then", flaky)

    with harness.session(jobs, context=None, instrumentation=events) as s:
        s.dispatcher.dispatch_sync(emitter, {"text": "o-41"})
        wait_until(lambda: _ended(events, emitter.name), what="the emitter to end")
        wait_until(lambda: heard.count >= 1, what="the listener")
        assert stays_false(lambda: heard.count > 1, 0.5 if harness.durable else 0)
    assert heard.items == ["o-41"]
    assert len(set(ids.items)) == 1  # the same id on every replay


def _waiter_job(
    jobs: JobRegistry[Any], name: str, event: Any, runs: Runs, timeout: timedelta, **options: Any
) -> Any:
    async def wait(order: Note, ctx: Any, step: Steps) -> None:
        got = await step.wait_for_event("approval", event, match="text", timeout=timeout)
        await step.run("record", lambda: runs.add((order.text, got)))

    return jobs.define_job(name, handle=wait, **options)


def _suspended(events: RecordingInstrumentation, name: str, count: int = 1) -> bool:
    return sum(e.kind == "run.suspended" for e in events.for_job(name)) >= count


def test_C42_a_wait_resumes_once_with_the_first_matching_event_sent_after_it_began(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    approved = jobs.event(f"shop/order.approved.{unique}", Approval)
    runs = Runs()
    job = _waiter_job(jobs, f"c42.{unique}", approved, runs, timedelta(seconds=60))
    with harness.session(jobs, context=None, instrumentation=events) as s:
        s.dispatcher.send_sync(approved, {"text": "o-1", "approver": "too-early"})  # before
        s.dispatcher.dispatch_sync(job, {"text": "o-1"})
        s.dispatcher.dispatch_sync(job, {"text": "o-2"})
        wait_until(lambda: _suspended(events, job.name, 2), what="both runs to wait")
        s.dispatcher.send_sync(approved, {"text": "o-3", "approver": "nobody-waits"})
        s.dispatcher.send_sync(approved, {"text": "o-2", "approver": "ada"})
        s.dispatcher.send_sync(approved, {"text": "o-1", "approver": "bob"})
        wait_until(lambda: runs.count == 2, what="both runs to resume")
        s.dispatcher.send_sync(approved, {"text": "o-1", "approver": "late-second"})
        assert stays_false(lambda: runs.count > 2, 0.5 if harness.durable else 0)
    assert sorted(runs.items) == [
        ("o-1", Approval(text="o-1", approver="bob")),
        ("o-2", Approval(text="o-2", approver="ada")),
    ]
    resumed = [e.step_id for e in events.for_job(job.name) if e.kind == "run.resumed"]
    assert resumed == ["approval", "approval"]


def test_C42_a_wait_ends_with_none_at_its_timeout_holding_no_worker(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    approved = jobs.event(f"shop/order.approved.{unique}", Approval)
    runs = Runs()
    job = _waiter_job(jobs, f"c42t.{unique}", approved, runs, timedelta(seconds=2))
    quick = jobs.define_job(f"c42q.{unique}", handle=lambda n, ctx: runs.add("quick"), payload=Note)
    with harness.session(jobs, context=None, instrumentation=events) as s:
        started = time.monotonic()
        for n in range(4):  # more waiting runs than the worker has threads
            s.dispatcher.dispatch_sync(job, {"text": f"w-{n}"})
        wait_until(lambda: _suspended(events, job.name, 4), what="four runs to wait")
        s.dispatcher.dispatch_sync(quick, {"text": "now"})
        wait_until(lambda: "quick" in runs.items, 10, what="a plain job while four runs wait")
        wait_until(lambda: runs.count == 5, 30, what="the waits to time out")
        took = time.monotonic() - started
    assert sorted(i for i in runs.items if i != "quick") == [(f"w-{n}", None) for n in range(4)]
    assert 2.0 <= took < 2.0 + 10, took


def test_C42_a_match_field_the_event_lacks_is_a_step_error_naming_it(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    approved = jobs.event(f"shop/order.approved.{unique}", Approval)
    runs = Runs()

    async def wrong(order: Note, ctx: Any, step: Steps) -> None:
        await step.wait_for_event("approval", approved, match="n", timeout=timedelta(seconds=5))

    job = jobs.define_job(
        f"c42m.{unique}", handle=wrong, on_failure=runs.fail, retry=Retry(attempts=3, **FAST)
    )
    with harness.session(jobs, context=None, instrumentation=events) as s:
        s.dispatcher.dispatch_sync(job, {"text": "o-1"})
        wait_until(lambda: len(runs.failures) == 1, what="on_failure")
    [(error, _)] = runs.failures
    assert isinstance(error, StepError) and "'n'" in str(error) and error.step_id == "approval"


class Tax(Payload):
    cents: int


def test_C43_invoke_returns_the_childs_value_and_dispatches_it_once(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    calls, seen = Runs(), Runs()
    flaky = fails_once("replay the parent")

    @jobs.job(f"c43.tax.{unique}")
    def compute_tax(order: Note, ctx: Any) -> Tax:
        calls.add(order.text)
        return Tax(cents=order.n * 20)

    @jobs.job(f"c43.parent.{unique}", retry=Retry(attempts=2, **FAST))
    async def parent(order: Note, ctx: Any, step: Steps) -> None:
        tax = await step.invoke("tax", compute_tax, {"text": order.text, "n": order.n})
        await step.run("then", flaky)
        seen.add(tax)

    with harness.session(jobs, context=None, instrumentation=events) as s:
        s.dispatcher.dispatch_sync(parent, {"text": "o-43", "n": 5})
        wait_until(lambda: _ended(events, parent.name), 30, what="the parent to end")
    assert calls.items == ["o-43"]
    assert set(map(repr, seen.items)) == {repr(Tax(cents=100))}
    assert isinstance(seen.items[-1], Tax)


def test_C43_a_child_that_gives_up_raises_step_failed_error_in_the_parent(
    harness: BackendHarness, jobs: JobRegistry[Any], events: RecordingInstrumentation, unique: str
) -> None:
    seen = Runs()

    def refuse(order: Note, ctx: Any) -> int:
        raise PermanentError("no tax for you")

    child = jobs.define_job(f"c43f.child.{unique}", handle=refuse, payload=Note)

    @jobs.job(f"c43f.parent.{unique}")
    async def parent(order: Note, ctx: Any, step: Steps) -> None:
        try:
            await step.invoke("tax", child, order)
        except StepFailedError as failed:
            seen.add((failed.step_id, str(failed.error)))

    with harness.session(jobs, context=None, instrumentation=events) as s:
        s.dispatcher.dispatch_sync(parent, {"text": "o-44"})
        wait_until(lambda: _ended(events, parent.name), 30, what="the parent to end")
    assert seen.items[-1] == ("tax", "PermanentError: no tax for you")
    assert _executed(events, parent.name)[-1] == "completed"
