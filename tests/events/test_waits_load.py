"""C42 under load, on a real worker (Celery and Dramatiq, Redis): 500 runs each waiting for its
own event, the events sent in random order with 100 unrelated events among them, and 100 runs
whose event never comes. Each run resumes exactly once, with its own event or (the 100) with
None within its timeout plus 5 s; a plain job dispatched while 600 runs wait runs at once."""

from __future__ import annotations

import importlib
import random
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from jobs_core import JobRegistry, Payload, Steps
from jobs_core.testing import RecordingInstrumentation
from tests.conformance.harness import wait_until

pytestmark = pytest.mark.timeout(240)

WAITING, NEVER, UNRELATED = 500, 100, 100
TIMEOUT = timedelta(seconds=8)


class Order(Payload):
    order_id: str


@pytest.mark.parametrize("backend", ["celery", "dramatiq"])
def test_waiting_runs_resume_once_each_with_their_own_event_or_none(
    backend: str, resources: Any, report_figure: Any
) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    approved = jobs.event("load/order.approved", Order)
    lock = threading.Lock()
    resumed: dict[str, list[tuple[Any, float]]] = {}
    started: dict[str, float] = {}

    @jobs.job("load.wait")
    async def wait(order: Order, ctx: Any, step: Steps) -> None:
        got = await step.wait_for_event("approval", approved, match="order_id", timeout=TIMEOUT)
        with lock:
            resumed.setdefault(order.order_id, []).append((got, time.monotonic()))

    plain: list[float] = []

    @jobs.job("load.plain")
    def quick(order: Order, ctx: Any) -> None:
        plain.append(time.monotonic())

    harness = importlib.import_module(f"tests.conformance.harness_{backend}").make_harness(
        resources
    )
    events = RecordingInstrumentation()
    ids = [f"o-{n}" for n in range(WAITING + NEVER)]
    try:
        with harness.session(jobs, context=None, instrumentation=events) as s:
            for first in range(0, len(ids), 200):
                s.dispatcher.dispatch_many_sync(
                    [(wait, {"order_id": i}) for i in ids[first : first + 200]]
                )
            began = time.monotonic()
            for i in ids:
                started[i] = began
            wait_until(
                lambda: events.kinds("load.wait").count("run.suspended") == len(ids),
                60,
                what="every run to wait",
            )
            s.dispatcher.dispatch_sync(quick, {"order_id": "plain"})
            wait_until(lambda: bool(plain), 10, what="a plain job while 600 runs wait")
            sends = [(approved, {"order_id": i}) for i in ids[:WAITING]]
            sends += [(approved, {"order_id": f"unrelated-{n}"}) for n in range(UNRELATED)]
            random.Random(7).shuffle(sends)
            sent_at = time.monotonic()
            for event, data in sends:
                s.dispatcher.send_sync(event, data)
            wait_until(lambda: len(resumed) == WAITING + NEVER, 60, what="every run to resume")
            s.drain()  # the queue drained: a second resume, had one been sent, has run
    finally:
        close = getattr(harness, "close", None)
        if close is not None:
            close()
    assert sorted(resumed) == sorted(ids)
    assert all(len(r) == 1 for r in resumed.values()), "a run resumed twice"
    for i in ids[:WAITING]:
        got, _ = resumed[i][0]
        assert got == Order(order_id=i), (i, got)
    for i in ids[WAITING:]:
        got, at = resumed[i][0]
        assert got is None
        assert at - started[i] <= TIMEOUT.total_seconds() + 5 + (sent_at - started[i]), at
    lateness = max(at - started[i] for i in ids[WAITING:] for _, at in resumed[i])
    report_figure(
        f"{backend}: {WAITING} resumed by their events, {NEVER} by timeout "
        f"(latest {lateness:.1f}s after dispatch, timeout {TIMEOUT.total_seconds():.0f}s)"
    )
