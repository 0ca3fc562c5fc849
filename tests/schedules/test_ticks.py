"""C29 across daylight-saving changes, with a controlled clock: the ticks cron defines.

Europe/Paris, 2025: on 30 March 02:00 CET jumps to 03:00 CEST (02:xx does not exist); on
26 October 03:00 CEST falls back to 02:00 CET (02:xx occurs twice). Debian cron's rule, which
cronsim follows: a fixed local time fires once (the first occurrence when it repeats, just after
the change when it is skipped); an expression with `*` in its minute or hour field follows real
time. (croniter 7.0 fires `30 2 * * *` twice on 26 October: that is why it was not chosen.)
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from jobs_core import JobRegistry, Schedule, Scheduler
from jobs_core.testing import RecordingDispatcher

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
SPRING_NIGHT = datetime(2025, 3, 29, 21, 0, tzinfo=UTC)  # 22:00 CET on the eve
AUTUMN_NIGHT = datetime(2025, 10, 25, 20, 0, tzinfo=UTC)  # 22:00 CEST on the eve


class Empty(BaseModel):
    pass


def schedule(cron: str, timezone: str = "Europe/Paris") -> tuple[JobRegistry[Any], Schedule[Any]]:
    jobs = JobRegistry[Any]()
    job = jobs.define_job("dst.job", payload=Empty, handle=lambda p, c: None)
    return jobs, jobs.schedule("dst", cron=cron, job=job, timezone=timezone)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def scheduled_ticks(cron: str, night: datetime, hours: int = 10) -> list[datetime]:
    """What a scheduler dispatches when its clock steps through the night minute by minute."""
    jobs, _ = schedule(cron)
    dispatcher = RecordingDispatcher()
    scheduler = Scheduler(jobs, dispatcher)
    ticks = []
    for minute in range(hours * 60 + 1):
        for tick in scheduler.run_pending(night + timedelta(minutes=minute, seconds=7)):
            assert tick.receipt is not None and not tick.receipt.deduplicated
            ticks.append(tick.at)
    assert len(dispatcher.dispatched) == len(ticks)
    return ticks


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        # 02:30 does not exist: it fires once, at 03:00 CEST, just after the change.
        ("30 2 * * *", ["2025-03-30 01:00"]),
        ("0 2 * * *", ["2025-03-30 01:00"]),
        # Every hour in real time: local 00:00, 01:00, then 03:00 (02:00 never exists).
        (
            "0 * * * *",
            ["2025-03-29 22:00", "2025-03-29 23:00"]
            + [f"2025-03-30 {h:02}:00" for h in range(0, 8)],
        ),
        # Once at 03:00 CEST for 02:00 and 02:30 together, then 03:30.
        ("*/30 2-3 * * *", ["2025-03-30 01:00", "2025-03-30 01:30"]),
    ],
)
def test_spring_forward_fires_a_missing_time_at_most_once(cron: str, expected: list[str]) -> None:
    assert scheduled_ticks(cron, SPRING_NIGHT) == [utc(e) for e in expected]


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        # 02:30 happens twice (00:30 UTC in CEST, 01:30 UTC in CET): it fires once, the first.
        ("30 2 * * *", ["2025-10-26 00:30"]),
        ("0 2 * * *", ["2025-10-26 00:00"]),
        # Every hour in real time: both 02:00 are real hours (00:00 and 01:00 UTC).
        (
            "0 * * * *",
            [f"2025-10-25 {h}:00" for h in (21, 22, 23)]
            + [f"2025-10-26 {h:02}:00" for h in range(0, 7)],
        ),
        # `*` in the minute field: real time, so every half hour of the two real 02:xx hours.
        ("*/30 2-3 * * *", [f"2025-10-26 {h:02}:{m:02}" for h in (0, 1, 2) for m in (0, 30)]),
    ],
)
def test_fall_back_fires_a_repeated_time_once(cron: str, expected: list[str]) -> None:
    assert scheduled_ticks(cron, AUTUMN_NIGHT) == [utc(e) for e in expected]


def test_ticks_are_the_local_times_that_cron_names() -> None:
    _, daily = schedule("0 9 * * *")
    start = datetime(2025, 3, 28, 12, 0, tzinfo=UTC)
    local = [t.astimezone(PARIS) for t in daily.next_ticks(4, start)]
    assert [(t.day, t.hour, t.minute) for t in local] == [
        (29, 9, 0),
        (30, 9, 0),
        (31, 9, 0),
        (1, 9, 0),
    ]
    assert [t.utcoffset() for t in local] == [timedelta(hours=h) for h in (1, 2, 2, 2)]


def test_the_idempotency_key_is_the_name_and_the_instant_in_utc() -> None:
    _, daily = schedule("0 9 * * *")
    tick = datetime(2025, 6, 2, 9, 0, tzinfo=PARIS)
    assert daily.idempotency_key(tick) == "dst@2025-06-02T07:00:00Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        daily.idempotency_key(datetime(2025, 6, 2, 9, 0))


EXPRESSIONS = [
    "30 2 * * *",
    "0 * * * *",
    "*/7 * * * *",
    "15 1-3 * * *",
    "0 */2 * * SUN",
    "59 1,2 * * *",
]
ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "UTC"]
CHANGES = [
    datetime(2025, 3, 30, 1, tzinfo=UTC),
    datetime(2025, 10, 26, 1, tzinfo=UTC),
    datetime(2025, 3, 9, 7, tzinfo=UTC),
    datetime(2025, 11, 2, 6, tzinfo=UTC),
    datetime(2025, 4, 5, 15, tzinfo=UTC),
    datetime(2025, 10, 4, 15, tzinfo=UTC),
]


@settings(max_examples=150, deadline=None)
@given(
    cron=st.sampled_from(EXPRESSIONS),
    zone=st.sampled_from(ZONES),
    change=st.sampled_from(CHANGES),
    offset=st.integers(min_value=-6 * 3600, max_value=6 * 3600),
    window=st.integers(min_value=1, max_value=4 * 3600),
)
def test_the_latest_tick_agrees_with_the_ticks_in_order(
    cron: str, zone: str, change: datetime, offset: int, window: int
) -> None:
    """`latest_tick` (what `run_pending` dispatches) never disagrees with the tick sequence,
    wherever the window falls around a change, whatever the zone."""
    _, sched = schedule(cron, zone)
    at = change + timedelta(seconds=offset)
    after = at - timedelta(seconds=window)
    sequence = []
    for tick in sched.ticks(change - timedelta(days=8)):
        if tick > at:
            break
        sequence.append(tick)
    in_window = [t for t in sequence if t > after]
    assert sched.latest_tick(at, after=after) == (in_window[-1] if in_window else None)
    assert sched.latest_tick(at) == sequence[-1]
