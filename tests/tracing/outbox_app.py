"""The job of the outbox trace test: written by the test process inside a traced request,
relayed by `python -m jobs_core relay` in a process of its own, run by the test's worker."""

from __future__ import annotations

from jobs_core import JobRegistry, Payload


class Order(Payload):
    order_id: str


ran: list[str] = []
"""The orders the worker ran (in the test's process: the relay process never runs them)."""

jobs = JobRegistry()
outboxed = jobs.define_job("otel.outboxed", handle=lambda o: ran.append(o.order_id), payload=Order)
