"""`python -m jobs_core list` shows schedules and their next ticks; `scheduler` runs them."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

from tests.conformance.harness import wait_until
from tests.schedules.app import every_minute, paris_morning
from tests.schedules.clock import AcceleratedClock
from tests.schedules.processes import APP, SchedulerProcess
from tests.test_cli import run_cli

UTC = timezone.utc


def test_list_shows_each_schedule_with_its_next_three_ticks_in_both_zones() -> None:
    before = datetime.now(UTC)
    result = run_cli("list", APP, "--json")
    assert result.returncode == 0, result.stderr
    [job] = json.loads(result.stdout)
    listed = {s["name"]: s for s in job["schedules"]}
    assert set(listed) == {"sched.every-minute", "sched.paris-morning"}
    paris = listed["sched.paris-morning"]
    assert (paris["cron"], paris["timezone"], paris["job"], paris["payload"]) == (
        "0 9 * * *",
        "Europe/Paris",
        "sched.beat",
        {"source": "paris"},
    )
    ticks = [(datetime.fromisoformat(t["local"]), t["utc"]) for t in paris["next_ticks"]]
    assert len(ticks) == 3
    for local, utc_text in ticks:
        assert (local.hour, local.minute) == (9, 0)
        assert local.utcoffset() in (timedelta(hours=1), timedelta(hours=2))
        assert local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") == utc_text
    first = ticks[0][0]
    assert first > before and first - before <= timedelta(days=1)
    assert [t for t, _ in ticks] == paris_morning.next_ticks(3, first - timedelta(seconds=1))

    text = run_cli("list", APP)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    start = lines.index("schedules:")
    assert lines[start + 1].startswith("sched.every-minute  cron: * * * * * (UTC)  job: sched.beat")
    paris_line = next(i for i, line in enumerate(lines) if line.startswith("sched.paris-morning"))
    nexts = lines[paris_line + 1 : paris_line + 4]
    assert all(n.startswith("  next: ") and " Europe/Paris = " in n for n in nexts), nexts
    assert [n.split(" = ")[1] for n in nexts] == [utc for _, utc in ticks]


def test_list_without_schedules_is_unchanged() -> None:
    result = run_cli("list", "examples.quickstart:jobs")
    assert result.returncode == 0 and "schedules:" not in result.stdout


def test_scheduler_refuses_inngest_and_a_registry_without_schedules() -> None:
    inngest = run_cli("scheduler", APP, JOBS_BACKEND="inngest")
    assert inngest.returncode == 2 and "cron functions served with the jobs" in inngest.stderr
    empty = run_cli("scheduler", "examples.quickstart:jobs")
    assert empty.returncode == 2 and "has no schedules" in empty.stderr
    not_a_clock = run_cli("scheduler", APP, "--clock", "tests.schedules.app:jobs")
    assert not_a_clock.returncode == 2 and "not a Clock" in not_a_clock.stderr
    failing = run_cli("scheduler", APP, "--clock", "tests.schedules.app:Beat")
    assert failing.returncode == 2 and "calling it failed" in failing.stderr


def test_scheduler_runs_inline_jobs_and_stops_cleanly_on_sigterm() -> None:
    """Inline, for development: the jobs run inside the scheduler process. The clock runs 60
    times faster than real time, starting ten seconds before 06:59 UTC."""
    clock = AcceleratedClock(datetime(2025, 6, 2, 6, 58, 50, tzinfo=UTC), time.time(), 60)
    process = SchedulerProcess(
        {"JOBS_BACKEND": "inline", **clock.environment()},
        "--clock",
        "tests.schedules.clock:from_env",
    )
    try:
        since = process.running_since()
        wait_until(lambda: process.text().count("beat ran: every-minute") >= 2, timeout=60)
    finally:
        code = process.stop()
    output = process.text()
    assert code == 0, output
    assert output.rstrip().endswith("scheduler stopped"), output
    first = every_minute.next_tick(since)
    assert first is not None
    key = every_minute.idempotency_key(first)
    assert f"schedule sched.every-minute: tick {key} dispatched sched.beat" in output, output
