"""C29: a schedule is checked when it is defined; every mistake is a `JobConfigError` then."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from jobs_core import JobConfigError, JobRegistry, Schedule


class Report(BaseModel):
    kind: str
    copies: int = 1


def make_registry() -> tuple[JobRegistry[Any], Any]:
    jobs = JobRegistry[Any]()

    @jobs.job("reports.send")
    def send(payload: Report, ctx: Any) -> None: ...

    return jobs, send


def test_a_good_schedule_is_kept_with_a_validated_payload() -> None:
    jobs, send = make_registry()
    schedule = jobs.schedule(
        "reports.daily",
        cron="0 9 * * *",
        job=send,
        payload={"kind": "daily"},
        timezone="Europe/Paris",
    )
    assert isinstance(schedule, Schedule)
    assert schedule.payload == Report(kind="daily", copies=1)
    assert (schedule.name, schedule.cron, schedule.timezone) == (
        "reports.daily",
        "0 9 * * *",
        "Europe/Paris",
    )
    assert jobs.schedules == [schedule]


def test_the_timezone_defaults_to_utc_and_a_payload_to_empty() -> None:
    jobs = JobRegistry[Any]()

    class Nothing(BaseModel):
        pass

    @jobs.job("tidy", payload=Nothing)
    def tidy(payload: Nothing, ctx: Any) -> None: ...

    schedule = jobs.schedule("tidy.nightly", cron="0  3 * * *", job=tidy)
    assert schedule.timezone == "UTC" and schedule.payload == Nothing()
    assert schedule.cron == "0 3 * * *"  # whitespace normalised: what Inngest is given


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("61 * * * *", "Bad minute"),
        ("* 24 * * *", "Bad hour"),
        ("0 9 * *", "needs 5 fields"),
        ("0 0 9 * * *", "needs 5 fields"),
        ("", "needs 5 fields"),
        ("every day", "needs 5 fields"),
        ("0 9 30 2 *", "Bad day-of-month"),
        ("0 9 L * *", "not portable"),
        ("0 9 * * 5L", "not portable"),
        ("0 9 * * MON#2", "not portable"),
        ("0 9 ? * *", "invalid cron expression"),
        ("0 9 15W * *", "invalid cron expression"),
    ],
)
def test_a_bad_cron_expression_is_refused_at_definition(cron: str, message: str) -> None:
    jobs, send = make_registry()
    with pytest.raises(JobConfigError, match=message) as info:
        jobs.schedule("reports.daily", cron=cron, job=send, payload={"kind": "daily"})
    assert "reports.daily" in str(info.value)
    assert jobs.schedules == []


def test_names_and_ranges_that_every_cron_knows_are_accepted() -> None:
    jobs, send = make_registry()
    for i, cron in enumerate(["*/15 8-18 * * MON-FRI", "0 0 1 JAN,JUL *", "5,35 */2 1-7 * 0"]):
        jobs.schedule(f"ok.{i}", cron=cron, job=send, payload={"kind": "x"})
    assert len(jobs.schedules) == 3


@pytest.mark.parametrize("timezone", ["Mars/Olympus_Mons", "Europe/paris ", "", "../etc/passwd"])
def test_an_unknown_timezone_is_refused(timezone: str) -> None:
    jobs, send = make_registry()
    with pytest.raises(JobConfigError, match="timezone"):
        jobs.schedule(
            "reports.daily", cron="0 9 * * *", job=send, payload={"kind": "d"}, timezone=timezone
        )


@pytest.mark.parametrize(
    "payload",
    [{"kind": 3}, {}, {"kind": "d", "copies": "many"}, ["daily"], "daily"],
)
def test_a_payload_that_does_not_fit_the_model_is_refused(payload: Any) -> None:
    jobs, send = make_registry()
    with pytest.raises(JobConfigError, match=r"reports\.send"):
        jobs.schedule("reports.daily", cron="0 9 * * *", job=send, payload=payload)


def test_a_payload_over_the_size_limit_is_refused() -> None:
    jobs, send = make_registry()
    with pytest.raises(JobConfigError, match="limit"):
        jobs.schedule("big", cron="0 9 * * *", job=send, payload={"kind": "x" * 300_000})


def test_a_duplicate_name_is_refused_and_the_first_schedule_stays() -> None:
    jobs, send = make_registry()
    first = jobs.schedule("reports.daily", cron="0 9 * * *", job=send, payload={"kind": "a"})
    with pytest.raises(JobConfigError, match="already defined"):
        jobs.schedule("reports.daily", cron="0 10 * * *", job=send, payload={"kind": "b"})
    assert jobs.schedules == [first]


@pytest.mark.parametrize("name", ["", "-lead", "has space", "a@b", None])
def test_a_bad_name_is_refused(name: Any) -> None:
    jobs, send = make_registry()
    with pytest.raises(JobConfigError, match="invalid schedule name"):
        jobs.schedule(name, cron="0 9 * * *", job=send, payload={"kind": "a"})


def test_the_job_must_be_one_of_this_registry() -> None:
    jobs, _ = make_registry()
    _, foreign = make_registry()
    with pytest.raises(JobConfigError, match="job= must be a job defined in this registry"):
        jobs.schedule("reports.daily", cron="0 9 * * *", job=foreign, payload={"kind": "a"})
    with pytest.raises(JobConfigError, match="job= must be a job"):
        jobs.schedule("reports.daily", cron="0 9 * * *", job="reports.send", payload={})  # type: ignore[arg-type]
