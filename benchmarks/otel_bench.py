"""What tracing costs a dispatch (issue 31), as rows of `python -m benchmarks --only otel`.

- `otel.noop`: `DramatiqDispatcher.dispatch_sync` to the run's Redis with `JobsInstrumentor`
  installed and OpenTelemetry's no-op tracer provider (the API alone, no SDK: what an app that
  installed the instrumentation but exports nothing pays), against the same dispatch with no
  instrumentation installed. Target: >= 0.95.
- `otel.sdk`: the same with the SDK's `TracerProvider` and an in-memory exporter (a span per
  dispatch recorded and kept), against no instrumentation: the cost per dispatch is printed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from .config import Config
from .jobs import PAYLOADS, noop
from .results import Row, compare
from .scenario import Env
from .timing import interleave


def rows(config: Config) -> list[str]:
    return ["otel.noop", "otel.sdk"]


def run(env: Env) -> list[Row]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import NoOpTracerProvider

    from jobs_core.backends.dramatiq import DramatiqDispatcher
    from jobs_core.contrib.opentelemetry import JobsInstrumentor

    queue = f"bench-otel-{uuid.uuid4().hex[:6]}"
    client = env.redis_client()
    dispatcher = DramatiqDispatcher(env.redis_url, queue)
    dispatcher.instrumentation = None
    payload = PAYLOADS["200B"]
    exporter = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(exporter))

    def side(provider: Any) -> Callable[[int], float]:
        def timed(count: int) -> float:
            if provider is not None:
                JobsInstrumentor().instrument(tracer_provider=provider)
            try:
                start = time.perf_counter()
                for _ in range(count):
                    dispatcher.dispatch_sync(noop, payload)
                return time.perf_counter() - start
            finally:
                if provider is not None:
                    JobsInstrumentor().uninstrument()
                client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.msgs")
                exporter.clear()

        return timed

    n = env.config.small_n
    env.log(f"otel: dispatch_sync traced and not, {n:,} x {env.config.rounds}")
    try:
        timings = interleave(
            {"noop": side(NoOpTracerProvider()), "sdk": side(sdk), "plain": side(None)},
            n,
            env.config.rounds,
            warmup_n=min(100, n),
            progress=env.log,
        )
    finally:
        dispatcher.close()
        client.close()
    what = "DramatiqDispatcher.dispatch_sync of a 200 B payload to Redis"
    return [
        compare(
            "otel.noop",
            f"{what} with JobsInstrumentor and a no-op tracer provider vs without it",
            timings,
            "noop",
            "plain",
            target=0.95,
            labels=("", "untraced"),
        ),
        compare(
            "otel.sdk",
            f"{what} with JobsInstrumentor, the SDK and an in-memory exporter vs without it",
            timings,
            "sdk",
            "plain",
            labels=("", "untraced"),
        ),
    ]
