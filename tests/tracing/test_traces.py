"""One trace from the request to the last retry, on every backend (issue 31): a request span,
a dispatch, three attempts (two fail, the third completes), read back from the OpenTelemetry
SDK's in-memory exporter; the same span tree on inline, Celery, Dramatiq and Inngest."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from jobs_core import JobRegistry, Payload, Retry, StepsSync
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.contrib.opentelemetry import JobsInstrumentor
from jobs_core.testing import RecordingInstrumentation
from jobs_core.worker import Delivery, JobWorker
from tests.conformance.harness import wait_until

FAST = Retry(
    attempts=3, min_backoff=timedelta(milliseconds=20), max_backoff=timedelta(milliseconds=40)
)


class Order(Payload):
    order_id: str


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    JobsInstrumentor().instrument(tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        JobsInstrumentor().uninstrument()


def _tree(spans: list[ReadableSpan]) -> list[tuple[str, str, str | None]]:
    """(name, kind, parent's name) of each span, sorted: the shape of the trace."""
    by_id = {s.context.span_id: s for s in spans}
    shape = []
    for s in spans:
        parent = by_id.get(s.parent.span_id) if s.parent else None
        shape.append((s.name, s.kind.name, parent.name if parent else None))
    return sorted(shape, key=lambda t: (t[2] or "", t[0]))


@pytest.mark.parametrize("backend", ["inline", "celery", "dramatiq", "inngest"])
def test_one_trace_from_the_request_through_every_retry(
    backend: str, spans: tuple[TracerProvider, InMemorySpanExporter], resources: Any
) -> None:
    provider, exporter = spans
    jobs: JobRegistry[Any] = JobRegistry()
    runs: list[int] = []

    @jobs.job("otel.flaky", retry=FAST)
    def flaky(order: Order) -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"attempt {len(runs)} fails")

    events = RecordingInstrumentation()
    harness = importlib.import_module(f"tests.conformance.harness_{backend}").make_harness(
        resources
    )
    try:
        with harness.session(jobs, context=None, instrumentation=events) as s:
            tracer = provider.get_tracer("the app")
            with tracer.start_as_current_span("POST /orders"):
                receipt = s.dispatcher.dispatch_sync(flaky, {"order_id": "o-1"})
            wait_until(
                lambda: (
                    len([x for x in exporter.get_finished_spans() if x.name.startswith("process")])
                    == 3
                ),
                30,
                what="three attempts' spans",
            )
    finally:
        getattr(harness, "close", lambda: None)()
    finished = [
        x
        for x in exporter.get_finished_spans()
        if x.name in ("POST /orders", "send otel.flaky", "process otel.flaky")
    ]
    assert len({x.context.trace_id for x in finished}) == 1  # one trace
    assert _tree(finished) == [
        ("POST /orders", "INTERNAL", None),
        ("send otel.flaky", "PRODUCER", "POST /orders"),
        ("process otel.flaky", "CONSUMER", "send otel.flaky"),
        ("process otel.flaky", "CONSUMER", "send otel.flaky"),
        ("process otel.flaky", "CONSUMER", "send otel.flaky"),
    ]
    [send] = [x for x in finished if x.kind is SpanKind.PRODUCER]
    assert send.attributes is not None
    assert dict(send.attributes) == {
        "messaging.system": backend,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "otel.flaky",
        "messaging.message.id": receipt.dispatch_id,
    }
    attempts = sorted(
        (x for x in finished if x.kind is SpanKind.CONSUMER),
        key=lambda x: x.attributes["jobs_core.attempt"],  # type: ignore[index]
    )
    assert [a.attributes["jobs_core.attempt"] for a in attempts] == [0, 1, 2]  # type: ignore[index]
    assert [a.attributes["jobs_core.outcome"] for a in attempts] == [  # type: ignore[index]
        "retrying",
        "retrying",
        "completed",
    ]
    assert [a.status.status_code for a in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert all(a.attributes["messaging.system"] == backend for a in attempts)  # type: ignore[index]
    assert attempts[0].events[0].name == "exception"  # the failure is recorded on its span


def test_steps_are_spans_inside_their_attempt(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = spans
    jobs: JobRegistry[Any] = JobRegistry()

    @jobs.job("otel.steps")
    def with_steps(order: Order, ctx: None, step: StepsSync) -> None:
        step.run("charge", lambda: "ch_1")
        step.run("receipt", lambda: None)

    InlineDispatcher().dispatch_sync(with_steps, {"order_id": "o-2"})
    shape = _tree(list(exporter.get_finished_spans()))
    assert ("step charge", "INTERNAL", "process otel.steps") in shape
    assert ("step receipt", "INTERNAL", "process otel.steps") in shape


def test_a_malformed_trace_context_starts_a_new_trace_and_is_said_once(
    spans: tuple[TracerProvider, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    provider, exporter = spans
    jobs: JobRegistry[Any] = JobRegistry()
    ran: list[str] = []
    job = jobs.define_job("otel.plain", handle=lambda o: ran.append(o.order_id), payload=Order)
    worker: JobWorker[Any] = JobWorker(jobs, context=None, backend="test")

    class Settle:
        def retry(self, delivery: Delivery, delay: timedelta) -> None: ...

        def give_up(self, delivery: Delivery, error: BaseException) -> None: ...

    caplog.set_level(logging.WARNING, logger="jobs_core.opentelemetry")
    bad = [
        {"traceparent": "00-not-a-trace"},
        {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "tracestate": "x" * 10_000},
    ]
    with provider.get_tracer("app").start_as_current_span("worker loop") as loop:
        for n, headers in enumerate(bad):
            worker.run(
                Delivery(job.name, {"order_id": f"o-{n}"}, 0, f"d-{n}", headers=headers),
                Settle(),
                job,
            )
    assert ran == ["o-0", "o-1"]  # the jobs still ran
    runs = [x for x in exporter.get_finished_spans() if x.name == "process otel.plain"]
    assert all(r.parent is None for r in runs)  # each a new trace
    assert all(r.context.trace_id != loop.get_span_context().trace_id for r in runs)
    assert len([r for r in caplog.records if "malformed trace context" in r.message]) == 1


def test_the_outbox_relay_carries_the_writing_requests_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter], resources: Any, tmp_path: Any
) -> None:
    """The row is written in a traced request; a relay process (`python -m jobs_core relay`,
    without OpenTelemetry) sends it later; the run's span is in the request's trace: the trace
    context travels in the outbox row."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from jobs_core.outbox import Outbox

    from .outbox_app import jobs, outboxed, ran

    provider, exporter = spans
    database_url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = create_engine(database_url)
    outbox = Outbox(engine)
    outbox.create_table()
    tracer = provider.get_tracer("the app")
    harness = importlib.import_module("tests.conformance.harness_dramatiq").make_harness(resources)
    ran.clear()
    try:
        with harness.session(jobs, context=None, instrumentation=RecordingInstrumentation()) as s:
            with tracer.start_as_current_span("POST /orders") as request:
                with Session(engine) as session, session.begin():
                    outbox.dispatcher(session).dispatch_sync(outboxed, {"order_id": "o-9"})
            env = {
                **os.environ,
                "JOBS_BACKEND": "dramatiq",
                "JOBS_BROKER_URL": s.dispatcher.broker_url,
                "JOBS_QUEUE": s.dispatcher.queue,
            }
            relay = subprocess.run(
                [
                    *(sys.executable, "-m", "jobs_core", "relay", "tests.tracing.outbox_app:jobs"),
                    *("--database-url", database_url, "--once"),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert relay.returncode == 0, relay.stderr
            assert json.loads(relay.stdout) == {"sent": 1}, relay.stdout
            wait_until(lambda: ran == ["o-9"], 20, what="the relayed job")
            wait_until(
                lambda: any(
                    x.name == "process otel.outboxed" for x in exporter.get_finished_spans()
                ),
                10,
                what="its span",
            )
    finally:
        getattr(harness, "close", lambda: None)()
    finished = list(exporter.get_finished_spans())
    [run] = [x for x in finished if x.name == "process otel.outboxed"]
    assert run.context.trace_id == request.get_span_context().trace_id
    [write] = [x for x in finished if x.name == "send otel.outboxed"]
    assert write.attributes is not None and write.attributes["messaging.system"] == "outbox"
    assert run.parent is not None and run.parent.span_id == write.context.span_id


def test_counters_a_duration_histogram_and_the_gauges(tmp_path: Any) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from jobs_core.outbox import Outbox
    from jobs_core.schedules.scheduler import Scheduler
    from jobs_core.testing import RecordingDispatcher

    reader = InMemoryMetricReader()
    JobsInstrumentor().instrument(meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        jobs: JobRegistry[Any] = JobRegistry()
        runs: list[int] = []

        @jobs.job("otel.metered", retry=Retry(attempts=1, min_backoff=timedelta(0)))
        def metered(order: Order) -> None:
            runs.append(1)
            if len(runs) == 1:
                raise RuntimeError("once")

        InlineDispatcher().dispatch_sync(metered, {"order_id": "o-1"})
        engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
        outbox = Outbox(engine)
        outbox.create_table()
        with Session(engine) as session, session.begin():
            outbox.dispatcher(session).dispatch_sync(metered, {"order_id": "o-2"})
        outbox.relay(RecordingDispatcher(), jobs, batch_size=100).run_once()
        jobs.schedule("otel.every-minute", cron="* * * * *", job=metered, payload={"order_id": "s"})
        from datetime import datetime, timezone

        scheduler = Scheduler(jobs, RecordingDispatcher())
        scheduler.run_pending(datetime(2026, 1, 1, 0, 0, 30, tzinfo=timezone.utc))
        scheduler.run_pending(datetime(2026, 1, 1, 0, 1, 5, tzinfo=timezone.utc))
        data = reader.get_metrics_data()
    finally:
        JobsInstrumentor().uninstrument()
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    ended = {
        dict(p.attributes)["jobs_core.outcome"]: p.value for p in points["jobs_core.runs.ended"]
    }
    assert ended == {"retrying": 1, "completed": 1}
    assert sum(p.value for p in points["jobs_core.runs.started"]) == 2
    assert sum(p.count for p in points["jobs_core.run.duration"]) == 2
    assert sum(p.value for p in points["jobs_core.jobs.dispatched"]) >= 2
    [backlog] = points["jobs_core.outbox.backlog"]
    assert backlog.value == 0  # the relay sent the one row
    [lag] = points["jobs_core.scheduler.lag"]
    assert lag.value > 0 and dict(lag.attributes) == {"jobs_core.schedule": "otel.every-minute"}
