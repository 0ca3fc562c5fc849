"""Schedules on Inngest, through the loopback stand-in: each schedule is served as a cron
function with the jobs (its trigger is `TZ=<zone> <cron>`), and a timer event like the one the
Inngest server sends makes it dispatch the job's event with the tick's key as event id."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import inngest
import pytest
from pydantic import BaseModel

from jobs_core import JobConfigError, JobRegistry
from jobs_core.backends.inngest import create_inngest_app, event_id_for
from jobs_core.backends.inngest.schedules import timer_tick
from jobs_core.testing import RecordingInstrumentation
from tests.inngest_harness import InngestHarness, run_asgi_app
from tests.schedules.app import jobs as app_jobs

pytestmark = pytest.mark.timeout(60)

APP_ID = "sched"
TIMER_EVENT = "inngest/scheduled.timer"


def timer(
    cron: str, tick: str, *, ts_ms: int | None = None, id: str | None = None
) -> dict[str, Any]:
    """The event the Inngest server sends a cron function: its id is the tick (RFC 3339, UTC)."""
    moment = datetime.fromisoformat(tick.replace("Z", "+00:00"))
    return {
        "name": TIMER_EVENT,
        "data": {"cron": cron},
        "id": tick if id is None else id,
        "ts": int(moment.timestamp() * 1000) if ts_ms is None else ts_ms,
    }


@contextmanager
def served(
    registry: JobRegistry[Any], instrumentation: RecordingInstrumentation
) -> Iterator[tuple[InngestHarness, dict[str, Any]]]:
    with InngestHarness(retry_delay=0.01) as harness:
        client = inngest.Inngest(app_id=APP_ID, **harness.client_kwargs())
        app = create_inngest_app(
            registry, context=None, client=client, instrumentation=instrumentation
        )
        with run_asgi_app(app) as base_url:
            functions = {f.id: f for f in harness.register_app(base_url + "/api/inngest")}
            yield harness, functions


def test_each_schedule_is_served_with_its_cron_trigger_and_timezone() -> None:
    with served(app_jobs, RecordingInstrumentation()) as (_, functions):
        triggers = {fid: f.triggers for fid, f in functions.items()}
    assert triggers == {
        "sched-sched.beat": [{"event": "sched.beat"}],
        "sched-schedule:sched.every-minute": [{"cron": "TZ=UTC * * * * *"}],
        "sched-schedule:sched.paris-morning": [{"cron": "TZ=Europe/Paris 0 9 * * *"}],
    }


def test_a_timer_dispatches_the_job_once_per_tick() -> None:
    events = RecordingInstrumentation()
    fn_id = "sched-schedule:sched.paris-morning"
    cron = "TZ=Europe/Paris 0 9 * * *"
    key = "sched.paris-morning@2025-06-02T07:00:00Z"
    with served(app_jobs, events) as (harness, _):
        harness.start_run(fn_id, timer(cron, "2025-06-02T07:00:00Z"))
        [fired] = harness.wait_for_runs(1, timeout=20, function_id=fn_id)
        assert fired.status == "completed", fired.error
        assert fired.output == {"tick": key, "dispatch_id": event_id_for("sched.beat", key)}
        [job_run] = harness.wait_for_runs(1, timeout=20, function_id="sched-sched.beat")
        assert job_run.status == "completed"
        assert job_run.event["id"] == event_id_for("sched.beat", key)
        assert job_run.event["data"] == {"source": "paris"}

        # The same tick again: a retried run, an older server that stamps the timer with the
        # time it fired (a ULID id, ts 300 ms after the tick), or a manual invoke soon after.
        harness.start_run(fn_id, timer(cron, "2025-06-02T07:00:00Z"))
        harness.start_run(
            fn_id, timer(cron, "2025-06-02T07:00:00Z", id="01JXAMPLE", ts_ms=1748847600300)
        )
        again = harness.wait_for_runs(3, timeout=20, function_id=fn_id)
        assert [r.output["tick"] for r in again] == [key] * 3
        harness.wait_until_idle(timeout=20)
        assert len(harness.runs("sched-sched.beat")) == 1
        # The next day's tick is a new dispatch.
        harness.start_run(fn_id, timer(cron, "2025-06-03T07:00:00Z"))
        harness.wait_for_runs(2, timeout=20, function_id="sched-sched.beat")
    # Every firing sends the tick's event (the Event API does not say it dropped a repeat);
    # they all carry the tick's one id, and the job ran once per tick (above).
    scheduled = [e.dispatch_id for e in events.for_job("sched.beat") if e.kind == "scheduled"]
    assert list(dict.fromkeys(scheduled)) == [
        event_id_for("sched.beat", key),
        event_id_for("sched.beat", "sched.paris-morning@2025-06-03T07:00:00Z"),
    ]


class Empty(BaseModel):
    pass


def dst_registry() -> JobRegistry[Any]:
    jobs = JobRegistry[Any]()
    job = jobs.define_job("dst.job", payload=Empty, handle=lambda p, c: None)
    jobs.schedule("dst.night", cron="30 2 * * *", job=job, timezone="Europe/Paris")
    return jobs


def test_a_repeated_local_hour_fired_twice_by_the_server_runs_the_job_once() -> None:
    """If Inngest fires 02:30 at both of its occurrences on 26 October, the second firing
    (01:30 UTC) names the schedule's tick (00:30 UTC, the first): Inngest drops the repeat."""
    fn_id = "sched-schedule:dst.night"
    cron = "TZ=Europe/Paris 30 2 * * *"
    with served(dst_registry(), RecordingInstrumentation()) as (harness, functions):
        assert functions[fn_id].triggers == [{"cron": cron}]
        harness.start_run(fn_id, timer(cron, "2025-10-26T00:30:00Z"))
        harness.start_run(fn_id, timer(cron, "2025-10-26T01:30:00Z"))
        fired = harness.wait_for_runs(2, timeout=20, function_id=fn_id)
        assert [r.output["tick"] for r in fired] == ["dst.night@2025-10-26T00:30:00Z"] * 2
        harness.wait_until_idle(timeout=20)
        assert len(harness.runs("sched-dst.job")) == 1


def test_the_tick_is_read_from_the_timer_event() -> None:
    [schedule] = dst_registry().schedules

    def tick(event_id: str, ts_ms: int = 0) -> str:
        event = inngest.Event(name=TIMER_EVENT, data={}, id=event_id, ts=ts_ms)
        return schedule.idempotency_key(timer_tick(schedule, event))

    assert tick("2025-10-26T00:30:00Z") == "dst.night@2025-10-26T00:30:00Z"
    assert tick("2025-10-26T00:29:59.400Z") == "dst.night@2025-10-26T00:30:00Z"  # a bit early
    assert tick("2025-10-26T01:30:00Z") == "dst.night@2025-10-26T00:30:00Z"  # repeated 02:30
    # An id that is not a time (older servers): the event's ts, 300 ms after the tick.
    assert tick("01JXAMPLE", 1761438600300) == "dst.night@2025-10-26T00:30:00Z"
    assert tick("", 1761442200300) == "dst.night@2025-10-26T00:30:00Z"
    # Spring: a server that fires the missing 02:30 at 03:30 CEST names 03:00 CEST, the tick.
    assert tick("2025-03-30T01:30:00Z") == "dst.night@2025-03-30T01:00:00Z"


def test_a_schedule_whose_function_id_is_a_job_name_is_refused() -> None:
    jobs = JobRegistry[Any]()
    job = jobs.define_job("schedule:nightly", payload=Empty, handle=lambda p, c: None)
    jobs.schedule("nightly", cron="0 3 * * *", job=job)
    client = inngest.Inngest(app_id=APP_ID, is_production=False)
    with pytest.raises(JobConfigError, match="also a job's name"):
        create_inngest_app(jobs, context=None, client=client)
