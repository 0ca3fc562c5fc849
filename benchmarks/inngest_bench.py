"""Inngest: `InngestDispatcher` and a job's Inngest function against the SDK used directly.

There is no Inngest server on these machines, so the Event API and the executor are the tests'
loopback stand-in (`tests/inngest_harness`), which answers as Inngest does.

- dispatch, keyed and batch rows: a stand-in with no app registered (the Event API alone);
  baselines are the SDK client's `send_sync(Event)`, `send_sync(Event(id=key))` (Inngest
  dedups by event id) and `send_sync([Event, ...])` (its list send: one request);
- e2e: a second stand-in whose executor calls the served functions over HTTP, as Inngest does.
  Ours is `create_inngest_job_function` (a run is one `JobWorker.run`); the baseline a plain
  `@client.create_function`; both are served by one FastAPI app (uvicorn, in this process) and
  driven by the same executor (8 calls in flight);
- idle: the same app and executor, one event at a time after `IDLE_PAUSE` of quiet, from the
  send to the run's completion, ours / plain of the median latencies per round (as the Celery
  and Dramatiq idle rows; the stand-in's executor waits on a condition, it does not poll).

What this measures is mostly the stand-in (a Python HTTP server, a new connection per call):
the ratios are meaningful, the absolute rates are not those of Inngest Cloud.
"""

from __future__ import annotations

from typing import Any

import fastapi
import inngest

from jobs_core.backends.inngest import InngestDispatcher, create_inngest_job_function, serve
from tests.inngest_harness import InngestHarness, run_asgi_app

from . import dispatch_suite
from .config import SMALL, Config
from .counter import SharedCounter
from .dispatch_suite import Baseline, DispatchKit
from .jobs import JOB_NAME, PAYLOADS, noop, plain_body
from .results import Row, compare
from .scenario import Env
from .timing import interleave
from .worker_suite import Completions, idle_row

BACKEND = "inngest"
APP_ID = "jobs-bench"
PLAIN_NAME = "bench.plain"
EXECUTOR_WORKERS = 8
SCALE = 0.25
"""A request to the stand-in costs ~2 ms: fewer dispatches per round than on Redis."""
IDLE_PAUSE = 0.05
"""Seconds of quiet before each event of the idle row."""
FUNCTIONS = (
    "create_inngest_job_function vs a plain @client.create_function, one served app, the "
    "stand-in's executor (8 in flight)"
)


def rows(config: Config) -> list[str]:
    return [
        *dispatch_suite.row_ids(BACKEND, ["send_sync_list"]),
        f"{BACKEND}.e2e",
        f"{BACKEND}.idle",
    ]


def forget(harness: InngestHarness) -> None:
    """Drop the events and requests the stand-in recorded: it keeps every one for the tests to
    inspect, which over a benchmark run would be gigabytes of 200 KB payloads."""
    with harness._lock:
        harness._events.clear()
        harness._requests.clear()
        harness._seen_ids.clear()


def _event(payload: dict[str, Any], **fields: Any) -> inngest.Event:
    return inngest.Event(name=JOB_NAME, data=payload, **fields)


def run(env: Env) -> list[Row]:
    with InngestHarness(workers=EXECUTOR_WORKERS) as harness:
        client = inngest.Inngest(app_id=APP_ID, **harness.client_kwargs())
        dispatcher = InngestDispatcher(client)
        send = client.send_sync
        kit = DispatchKit(
            BACKEND,
            dispatcher,
            public=Baseline(
                "send_sync",
                "client.send_sync(inngest.Event(name=..., data=payload)) to the loopback Event API",
                lambda payload: send(_event(payload)),
            ),
            keyed=Baseline(
                "send_sync(id=key)",
                "client.send_sync(Event(..., id=key)) (Inngest dedups by event id)",
                lambda payload, key: send(_event(payload, id=key)),
            ),
            batches=[
                Baseline(
                    "send_sync_list",
                    "one client.send_sync([Event, ...]) of the n events (the SDK's list send)",
                    lambda payloads: send([_event(p) for p in payloads]),
                    target=0.90,
                )
            ],
            clear=lambda: forget(harness),
            scale=SCALE,
            dispatch_targets={"200B": 0.90, "10KB": 0.90, "200KB": 0.95},
            keyed_target=0.90,
            single_target=5.0,
        )
        try:
            rows = dispatch_suite.all_rows(env, kit)
        finally:
            dispatcher.close()
    return [*rows, *_e2e(env)]


def _e2e(env: Env) -> list[Row]:
    """The e2e and idle rows (one app serving both functions, one executor)."""
    config, payload = env.config, PAYLOADS[SMALL]
    env.log(f"inngest: end to end (stand-in executor, {EXECUTOR_WORKERS} calls in flight)")
    ours_hits, plain_hits = SharedCounter(), SharedCounter()
    with InngestHarness(workers=EXECUTOR_WORKERS) as harness:
        client = inngest.Inngest(app_id=APP_ID, **harness.client_kwargs())
        ours_fn = create_inngest_job_function(client, noop, ours_hits)

        @client.create_function(
            fn_id=PLAIN_NAME, name=PLAIN_NAME, trigger=inngest.TriggerEvent(event=PLAIN_NAME)
        )
        def plain_fn(ctx: inngest.ContextSync) -> None:
            plain_body(ctx.event.data, plain_hits)

        app = fastapi.FastAPI()
        serve(app, client, [ours_fn, plain_fn])
        dispatcher = InngestDispatcher(client)
        plain_event = inngest.Event(name=PLAIN_NAME, data=payload)

        def check() -> str | None:
            errors = harness.errors
            return "; ".join(errors[-3:]) if errors else None

        ours = Completions(ours_hits, "inngest ours", check)
        plain = Completions(plain_hits, "inngest plain", check)

        def send_ours() -> None:
            dispatcher.dispatch_sync(noop, payload)

        def send_plain() -> None:
            client.send_sync(plain_event)

        try:
            with run_asgi_app(app) as base_url:
                harness.register_app(base_url + "/api/inngest")
                timings = interleave(
                    {
                        "ours": lambda n: ours.e2e(send_ours, n),
                        "plain": lambda n: plain.e2e(send_plain, n),
                    },
                    config.inngest_e2e_n,
                    config.rounds,
                    warmup_n=config.warmup_n,
                    progress=env.log,
                )
                idle = idle_row(
                    env,
                    f"{BACKEND}.idle",
                    f"{FUNCTIONS}; {IDLE_PAUSE * 1000:.0f} ms quiet before each event",
                    (ours, send_ours),
                    (plain, send_plain),
                    IDLE_PAUSE,
                )
        finally:
            dispatcher.close()
            forget(harness)
    e2e = compare(
        f"{BACKEND}.e2e",
        f"first event to last completed run: {FUNCTIONS}",
        timings,
        "ours",
        "plain",
        target=0.90,
        labels=("", "plain"),
    )
    return [e2e, idle]
