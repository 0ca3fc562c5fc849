"""OpenTelemetry for jobs_core: one trace from the code that dispatched a job to its last run,
on every backend (`pip install 'jobs-core[opentelemetry]'`).

    from jobs_core.contrib.opentelemetry import JobsInstrumentor

    JobsInstrumentor().instrument(tracer_provider=provider, meter_provider=meter_provider)

or, with no code change, `opentelemetry-instrument python -m jobs_core worker app.jobs:jobs`
(the `opentelemetry_instrumentor` entry point). Every dispatcher and worker of the process is
traced, those made before the call included:

- a PRODUCER span `send <job>` per dispatched job, whose context travels with the job (a
  Celery message header, a Dramatiq message option, a reserved key of an Inngest event's data
  that the payload never sees, or the process itself on inline);
- a CONSUMER span `process <job>` per run attempt, a child of its dispatch's span (retries and
  resumes included), with `jobs_core.outcome` (`completed`, `retrying`, `failed`, ...); a failed
  or retried attempt records its exception and has status ERROR;
- an INTERNAL span `step <step id>` per step a run runs, a child of the attempt's span;
- metrics: `jobs_core.jobs.dispatched`, `jobs_core.runs.started`, `jobs_core.runs.ended` (by
  outcome) counters, and `jobs_core.run.duration` (seconds, by outcome).

Attribute names follow OpenTelemetry's messaging conventions: `messaging.system` (the
backend), `messaging.operation.type` (`send` / `process`), `messaging.destination.name` (the
job), `messaging.message.id` (the dispatch id), and `jobs_core.attempt` (0 for the first run).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ...hooks import add as add_hook
from ...hooks import remove as remove_hook
from .tracing import TracingHook

__all__ = ["JobsInstrumentor", "TracingHook"]


class JobsInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces and measures every dispatch and run of the process (see the module)."""

    _hook: TracingHook | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        hook = TracingHook(kwargs.get("tracer_provider"), kwargs.get("meter_provider"))
        JobsInstrumentor._hook = hook
        add_hook(hook)

    def _uninstrument(self, **kwargs: Any) -> None:
        if JobsInstrumentor._hook is not None:
            remove_hook(JobsInstrumentor._hook)
            JobsInstrumentor._hook = None
