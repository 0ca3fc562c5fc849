"""Draws docs/img/trace.svg: the spans of one real dispatch with two retries, as a trace
viewer (Jaeger, Tempo, Honeycomb) lays them out: one row per span, indented under its parent,
a bar from its start to its end.

    .venv/bin/python docs/img/make_trace.py

It runs a real Dramatiq worker on a private redis-server (tests/support), the OpenTelemetry SDK
with an in-memory exporter, and a request span around the dispatch.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from jobs_core import JobRegistry, Payload, Retry  # noqa: E402
from jobs_core.contrib.opentelemetry import JobsInstrumentor  # noqa: E402
from jobs_core.testing import RecordingInstrumentation  # noqa: E402

OUT = Path(__file__).with_name("trace.svg")


class Order(Payload):
    order_id: str


def record() -> list[ReadableSpan]:
    from tests.conformance.harness_dramatiq import make_harness
    from tests.conftest import SharedResources

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    JobsInstrumentor().instrument(tracer_provider=provider)
    jobs: JobRegistry[Any] = JobRegistry()
    runs: list[int] = []

    @jobs.job("billing.charge", retry=Retry(attempts=3, min_backoff=timedelta(seconds=0.4)))
    def charge(order: Order) -> None:
        runs.append(1)
        time.sleep(0.05)
        if len(runs) < 3:
            raise ConnectionError("payment provider timed out")

    resources = SharedResources()
    harness = make_harness(resources)
    try:
        with harness.session(jobs, context=None, instrumentation=RecordingInstrumentation()) as s:
            with provider.get_tracer("shop").start_as_current_span("POST /orders"):
                time.sleep(0.01)
                s.dispatcher.dispatch_sync(charge, {"order_id": "o-1"})
            deadline = time.monotonic() + 30
            while len(runs) < 3 or len(exporter.get_finished_spans()) < 5:
                if time.monotonic() > deadline:
                    raise RuntimeError("the three attempts did not end")
                time.sleep(0.05)
    finally:
        getattr(harness, "close", lambda: None)()
        resources.close()
        JobsInstrumentor().uninstrument()
    return list(exporter.get_finished_spans())


def draw(spans: list[ReadableSpan]) -> str:
    by_id = {s.context.span_id: s for s in spans}

    def depth(span: ReadableSpan) -> int:
        parent = by_id.get(span.parent.span_id) if span.parent else None
        return 0 if parent is None else 1 + depth(parent)

    order = sorted(spans, key=lambda s: s.start_time or 0)
    start = min(s.start_time or 0 for s in spans)
    end = max(s.end_time or 0 for s in spans)
    width, label, row = 900, 330, 34
    scale = (width - label - 20) / (end - start)
    height = 70 + row * len(order) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="16" y="28" font-size="16" font-weight="bold">Trace '
        f"{format(order[0].context.trace_id, '032x')[:16]}... "
        f"({(end - start) / 1e6:,.0f} ms, {len(order)} spans)</text>",
    ]
    for tick in range(5):
        x = label + tick * (width - label - 20) / 4
        ms = tick * (end - start) / 4 / 1e6
        parts.append(
            f'<line x1="{x:.0f}" y1="44" x2="{x:.0f}" y2="{height - 30}" stroke="#e3e3e3"/>'
        )
        parts.append(
            f'<text x="{x:.0f}" y="{height - 12}" fill="#777" '
            f'text-anchor="middle">{ms:,.0f} ms</text>'
        )
    colours = {"INTERNAL": "#8c6bb1", "PRODUCER": "#2b8cbe", "CONSUMER": "#41ab5d"}
    for i, span in enumerate(order):
        y = 56 + i * row
        attrs = dict(span.attributes or {})
        name = span.name
        if "jobs_core.attempt" in attrs:
            name += f"  attempt {attrs['jobs_core.attempt']}: {attrs.get('jobs_core.outcome')}"
        indent = 16 + 18 * depth(span)
        parts.append(f'<text x="{indent}" y="{y + 17}">{escape(name)}</text>')
        x = label + ((span.start_time or 0) - start) * scale
        w = max(2.0, ((span.end_time or 0) - (span.start_time or 0)) * scale)
        failed = span.status.status_code.name == "ERROR"
        colour = "#e34a33" if failed else colours.get(span.kind.name, "#999")
        parts.append(
            f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="18" rx="3" fill="{colour}"/>'
        )
        ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        parts.append(f'<text x="{x + w + 6:.1f}" y="{y + 17}" fill="#555">{ms:,.1f} ms</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    OUT.write_text(draw(record()))
    print(f"wrote {OUT}")
