"""What sending an event costs (issue 30), as rows of `python -m benchmarks --only events`.

- `events.send.<backend>` (inline, celery, dramatiq): `send_sync` of an event that triggers 3
  jobs, against one `dispatch_many_sync` of the same 3 jobs with the same payload: the event's
  own work (its data validated once, the fan-out, the look-up of runs waiting for it). Celery
  and Dramatiq send to the run's Redis with no worker (the messages are dropped after each
  round); inline runs the three empty jobs. Target: >= 0.67 (a send costs at most 1.5x).
- `events.send.inngest`: `send_sync` of an event to the Inngest stand-in, against the SDK's own
  `client.send_sync` of the same event. Target: >= 0.9.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from jobs_core import JobRegistry, Payload

from .config import Config
from .results import Row, compare
from .scenario import Env
from .timing import interleave

jobs = JobRegistry[Any]()


class SignupCompleted(Payload):
    user_id: int
    email: str
    plan: str = "trial"


signed_up = jobs.event("bench/signup.completed", SignupCompleted)
TRIGGERED = [
    jobs.define_job(name, handle=lambda s, ctx: None, on=signed_up)
    for name in ("bench.welcome", "bench.trial", "bench.crm")
]
DATA = {"user_id": 7, "email": "ada@example.com"}
BACKENDS = ("inline", "celery", "dramatiq", "inngest")


def rows(config: Config) -> list[str]:
    return [f"events.send.{backend}" for backend in BACKENDS]


def _sides(dispatcher: Any, drop: Callable[[], None]) -> dict[str, Callable[[int], float]]:
    many = [(job, DATA) for job in TRIGGERED]

    def send(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            dispatcher.send_sync(signed_up, DATA)
        elapsed = time.perf_counter() - start
        drop()
        return elapsed

    def dispatch_many(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            dispatcher.dispatch_many_sync(many)
        elapsed = time.perf_counter() - start
        drop()
        return elapsed

    return {"send": send, "dispatch_many": dispatch_many}


def fan_out_row(env: Env, backend: str) -> Row:
    queue = f"bench-events-{uuid.uuid4().hex[:6]}"
    client = env.redis_client()
    dispatcher: Any
    if backend == "inline":
        from jobs_core.backends.inline import InlineDispatcher

        dispatcher = InlineDispatcher()
    elif backend == "celery":
        from jobs_core.backends.celery import CeleryDispatcher

        dispatcher = CeleryDispatcher(env.redis_url, queue)
    else:
        from jobs_core.backends.dramatiq import DramatiqDispatcher

        dispatcher = DramatiqDispatcher(env.redis_url, queue)
    dispatcher.instrumentation = None

    def drop() -> None:
        for key in client.scan_iter(f"*{queue}*"):
            client.delete(key)

    n = env.config.small_n
    env.log(f"events: {backend} send of 3 jobs, {n:,} x {env.config.rounds}")
    try:
        timings = interleave(
            _sides(dispatcher, drop), n, env.config.rounds, warmup_n=min(50, n), progress=env.log
        )
    finally:
        getattr(dispatcher, "close", lambda: None)()
        client.close()
    return compare(
        f"events.send.{backend}",
        f"{backend}: send_sync of an event triggering 3 jobs vs dispatch_many_sync of the "
        "same 3 jobs",
        timings,
        "send",
        "dispatch_many",
        target=0.67,
        labels=("", "dispatch_many"),
    )


def inngest_row(env: Env) -> Row:
    import inngest

    from jobs_core.backends.inngest import InngestDispatcher
    from tests.inngest_harness import InngestHarness

    n = max(10, env.config.small_n // 5)
    with InngestHarness() as harness:
        client = inngest.Inngest(app_id="bench-events", **harness.client_kwargs())
        dispatcher = InngestDispatcher(client)
        dispatcher.instrumentation = None
        event = inngest.Event(name=signed_up.name, data=DATA)

        def ours(count: int) -> float:
            start = time.perf_counter()
            for _ in range(count):
                dispatcher.send_sync(signed_up, DATA)
            return time.perf_counter() - start

        def sdk(count: int) -> float:
            start = time.perf_counter()
            for _ in range(count):
                client.send_sync(event)
            return time.perf_counter() - start

        env.log(f"events: inngest send, {n:,} x {env.config.rounds}")
        try:
            timings = interleave(
                {"send": ours, "sdk": sdk}, n, env.config.rounds, warmup_n=5, progress=env.log
            )
        finally:
            dispatcher.close()
    return compare(
        "events.send.inngest",
        "InngestDispatcher.send_sync of an event vs the SDK's client.send_sync of the same "
        "event, to the Inngest stand-in",
        timings,
        "send",
        "sdk",
        target=0.9,
        labels=("", "client.send_sync"),
    )


def run(env: Env) -> list[Row]:
    found = [fan_out_row(env, backend) for backend in ("inline", "celery", "dramatiq")]
    return [*found, inngest_row(env)]
