"""C30 on Celery and Dramatiq: three `python -m jobs_core scheduler` processes against one real
Redis, for two minutes of `* * * * *` (and a 09:00 Paris schedule whose tick falls at the same
instant), give exactly one run per tick on a real worker.

The three processes share one clock that runs 20 times faster than real time (every process
derives it from the same real epoch, as replicas with synchronised clocks share UTC), so they
all wake at each tick together and race for it; two simulated minutes take six real seconds.
Each tick's idempotency key is claimed in Redis by exactly one process; the test checks the
claims, each process's log of what it dispatched, and the worker's runs, against the ticks of
the window in which all three were running.
"""

from __future__ import annotations

import importlib
import re
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from jobs_core.dispatch.idempotency import KEY_PREFIX
from jobs_core.testing import RecordingInstrumentation
from tests.conformance.harness import wait_until
from tests.schedules.app import beat, every_minute, jobs, paris_morning
from tests.schedules.clock import AcceleratedClock
from tests.schedules.processes import SchedulerProcess

UTC = timezone.utc
SPEED = 20.0
REPLICAS = 3
DISPATCHED = re.compile(r"schedule \S+: tick (\S+) dispatched ")


def ticks_between(after: datetime, until: datetime) -> set[str]:
    keys = set()
    for schedule in (every_minute, paris_morning):
        for tick in schedule.ticks(after):
            if tick > until:
                break
            keys.add(schedule.idempotency_key(tick))
    return keys


@pytest.mark.parametrize("backend", ["celery", "dramatiq"])
def test_three_schedulers_give_exactly_one_run_per_tick(backend: str, resources: Any) -> None:
    harness = importlib.import_module(f"tests.conformance.harness_{backend}").make_harness(
        resources
    )
    client = redis.Redis.from_url(harness.url)
    claims_pattern = f"{KEY_PREFIX}{beat.name}:*"
    stale = list(client.scan_iter(match=claims_pattern))
    if stale:
        client.delete(*stale)
    instrumentation = RecordingInstrumentation()
    with harness.session(jobs, context=None, instrumentation=instrumentation) as session:
        clock = AcceleratedClock(datetime(2025, 6, 2, 6, 58, 0, tzinfo=UTC), time.time(), SPEED)
        env = {
            "JOBS_BACKEND": backend,
            "JOBS_BROKER_URL": harness.url,
            "JOBS_QUEUE": session.queue,
            **clock.environment(),
        }
        processes = [
            SchedulerProcess(env, "--clock", "tests.schedules.clock:from_env")
            for _ in range(REPLICAS)
        ]
        try:
            all_running = max(p.running_since() for p in processes)
            end = all_running + timedelta(minutes=2, seconds=10)
            wait_until(lambda: clock.now() >= end, timeout=60, what="two simulated minutes")
        finally:
            codes = [p.stop() for p in processes]
        outputs = "\n----\n".join(p.text() for p in processes)
        assert codes == [0] * REPLICAS, outputs

        expected = ticks_between(all_running, end)
        # Two minutely ticks at least, and 07:00 UTC in Paris unless the processes took more
        # than six real seconds to start.
        assert sum(k.startswith(every_minute.name) for k in expected) >= 2, expected
        claims = {
            key.decode().removeprefix(f"{KEY_PREFIX}{beat.name}:"): client.get(key).decode()
            for key in client.scan_iter(match=claims_pattern)
        }
        assert expected <= set(claims), (expected, claims)

        dispatched = Counter(
            m.group(1) for p in processes for m in map(DISPATCHED.search, p.output()) if m
        )
        assert dispatched == Counter(set(claims)), outputs

        def runs() -> Counter[str]:
            return Counter(
                e.dispatch_id or ""
                for e in instrumentation.for_job(beat.name)
                if e.kind == "completed"
            )

        wait_until(lambda: set(runs()) == set(claims.values()), timeout=30, what="the runs")
        session.drain()  # the schedulers have stopped: once drained, no run is still to come
        assert sum(runs().values()) == len(claims), runs()
        assert all(count == 1 for count in runs().values()), runs()
        started = [e for e in instrumentation.for_job(beat.name) if e.kind == "started"]
        assert len(started) == len(claims)
    stale = list(client.scan_iter(match=claims_pattern))
    if stale:
        client.delete(*stale)
    client.close()
