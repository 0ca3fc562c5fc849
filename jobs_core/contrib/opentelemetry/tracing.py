"""`TracingHook`: jobs_core's hooks (`jobs_core.hooks`) as OpenTelemetry spans and metrics."""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.propagate import get_global_textmap
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .version import VERSION

logger = logging.getLogger("jobs_core.opentelemetry")

SCOPE = "jobs_core"
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
MAX_TRACESTATE = 512
"""The longest `tracestate` taken from a message (W3C: 32 members of up to 256 characters;
what a message carries is capped well below what could hurt)."""

OUTCOMES = {
    "completed": "completed",
    "retry": "retrying",
    "failed": "failed",
    "deferred": "deferred",
    "continued": "continued",
    "parked": "parked",
}
"""`jobs_core.outcome` of an attempt, by the core's outcome status."""

_attempt: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "jobs_core_otel_attempt", default=None
)


class _Attempt:
    """The span of one run attempt, and the spans of its steps still open."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.steps: dict[str, Span] = {}


class TracingHook:
    """Spans and metrics for every dispatch and run of the process (`JobsInstrumentor`)."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.tracer = trace.get_tracer(SCOPE, VERSION, tracer_provider)
        meter = metrics.get_meter(SCOPE, VERSION, meter_provider)
        self.dispatched = meter.create_counter(
            "jobs_core.jobs.dispatched", unit="{job}", description="Jobs handed to a backend"
        )
        self.started = meter.create_counter(
            "jobs_core.runs.started", unit="{run}", description="Run attempts started"
        )
        self.ended = meter.create_counter(
            "jobs_core.runs.ended", unit="{run}", description="Run attempts ended, by outcome"
        )
        self.duration = meter.create_histogram(
            "jobs_core.run.duration", unit="s", description="How long a run attempt took"
        )
        self._warned = False
        self._gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for name, unit, description in (
            ("jobs_core.outbox.backlog", "{row}", "Outbox rows waiting to be sent"),
            ("jobs_core.scheduler.lag", "s", "How late a schedule's tick was dispatched"),
        ):
            self._gauges[name] = {}
            meter.create_observable_gauge(
                name, callbacks=[self._observer(name)], unit=unit, description=description
            )

    def measure(self, name: str, value: float, attributes: Mapping[str, str]) -> None:
        if name in self._gauges:
            self._gauges[name][tuple(sorted(attributes.items()))] = value

    def _observer(self, name: str) -> Any:
        def observe(options: Any) -> Iterator[metrics.Observation]:
            for attributes, value in list(self._gauges[name].items()):
                yield metrics.Observation(value, dict(attributes))

        return observe

    # -- the producer side ---------------------------------------------------------------

    @contextmanager
    def dispatching(self, backend: str, jobs: Sequence[Any]) -> Iterator[list[dict[str, str]]]:
        spans = [
            self.tracer.start_span(
                f"send {name}",
                context=self._parent(carried, name, dispatch_id) if carried else None,
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": backend,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "send",
                    "messaging.destination.name": name,
                    "messaging.message.id": dispatch_id,
                },
            )
            for name, dispatch_id, carried in jobs
        ]
        headers: list[dict[str, str]] = []
        for span in spans:
            carrier: dict[str, str] = {}
            if span.is_recording():  # a no-op tracer's span has no context to carry
                get_global_textmap().inject(carrier, trace.set_span_in_context(span))
            headers.append(carrier)
        try:
            yield headers
        except BaseException as error:
            for span in spans:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
            raise
        finally:
            for span in spans:
                span.end()
        for name, *_ in jobs:
            self.dispatched.add(
                1, {"messaging.system": backend, "messaging.destination.name": name}
            )

    # -- the consumer side ---------------------------------------------------------------

    @contextmanager
    def running(
        self,
        backend: str,
        job_name: str,
        dispatch_id: str | None,
        attempt: int,
        headers: Mapping[str, str],
    ) -> Iterator[Any]:
        parent = self._parent(headers, job_name, dispatch_id)
        attributes: dict[str, Any] = {
            "messaging.system": backend,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": job_name,
            "jobs_core.attempt": attempt,
        }
        if dispatch_id:
            attributes["messaging.message.id"] = dispatch_id
        metric = {"messaging.system": backend, "messaging.destination.name": job_name}
        span = self.tracer.start_span(
            f"process {job_name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        scope = _Scope(span, self, metric)
        token = otel_context.attach(trace.set_span_in_context(span))
        mine = _attempt.set(_Attempt(span))
        self.started.add(1, metric)
        try:
            yield scope
        except BaseException as error:
            if not scope.done:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
            raise
        finally:
            _attempt.reset(mine)
            otel_context.detach(token)
            span.end()

    def _parent(self, headers: Mapping[str, str], job_name: str, dispatch_id: str | None) -> Any:
        """The context a run's span is the child of: its dispatch's, from the headers; the
        current one (inline: the dispatch itself) where none came; a new trace where what
        came is malformed (logged once per process)."""
        if not headers:
            return None
        traceparent = headers.get("traceparent", "")
        tracestate = headers.get("tracestate", "")
        if not TRACEPARENT.match(traceparent) or len(tracestate) > MAX_TRACESTATE:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "job %s (dispatch %s) came with a malformed trace context (traceparent "
                    "%r...): its run starts a new trace (said once per process)",
                    job_name,
                    dispatch_id,
                    traceparent[:60],
                )
            return otel_context.Context()  # a new trace, not the worker's current one
        carrier = {"traceparent": traceparent}
        if tracestate:
            carrier["tracestate"] = tracestate
        return get_global_textmap().extract(carrier)

    # -- steps -----------------------------------------------------------------------------

    def step(
        self, kind: str, step_id: str | None, attempt: int, error: BaseException | None
    ) -> None:
        run = _attempt.get()
        if run is None or step_id is None:
            return
        if kind == "step.started":
            run.steps[step_id] = self.tracer.start_span(
                f"step {step_id}",
                context=trace.set_span_in_context(run.span),
                kind=SpanKind.INTERNAL,
                attributes={"jobs_core.step.id": step_id, "jobs_core.step.attempt": attempt},
            )
        elif kind in ("step.completed", "step.failed"):
            span = run.steps.pop(step_id, None)
            if span is None:
                return
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
            span.end()
        elif kind in ("run.suspended", "run.resumed"):
            run.span.add_event(kind, {"jobs_core.step.id": step_id})


class _Scope:
    """The end of one attempt: its outcome on its span and in the metrics."""

    def __init__(self, span: Span, hook: TracingHook, metric: dict[str, Any]) -> None:
        self.span = span
        self.hook = hook
        self.metric = metric
        self.began = time.perf_counter()
        self.done = False

    def ended(self, outcome: Any) -> None:
        self.done = True
        told = OUTCOMES.get(str(outcome.status), str(outcome.status))
        self.span.set_attribute("jobs_core.outcome", told)
        error = outcome.error
        if error is not None and told in ("retrying", "failed"):
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
        metric = {**self.metric, "jobs_core.outcome": told}
        self.hook.ended.add(1, metric)
        self.hook.duration.record(time.perf_counter() - self.began, metric)
