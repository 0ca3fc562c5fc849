"""Inngest: `InngestDispatcher` against the SDK client's own `send_sync` of the same event.

There is no Inngest server on these machines, so the Event API and the executor are the tests'
loopback stand-in (`tests/inngest_harness`), which answers as Inngest does.

- dispatch, floor and batch: a harness with no app registered, so events are accepted and
  recorded but run nothing (the Event API alone);
- end to end: a second harness whose executor calls the served functions over HTTP, as
  Inngest does. Ours is `create_inngest_job_function` (a run is one `run_job_sync`); raw is a
  plain `@client.create_function` no-op; both are served by one FastAPI app (our `serve`,
  uvicorn, in this process) and driven by the same executor (8 calls in flight). Each side's
  handler counts itself; completion is polled with a deadline.

What this measures is mostly the harness (a Python HTTP server, a new connection per
request): the ratios are meaningful, the absolute rates are not those of Inngest Cloud.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import fastapi
import inngest

from jobs_core.backends.inngest import InngestDispatcher, create_inngest_job_function, serve
from tests.inngest_harness import InngestHarness, run_asgi_app

from .common import (
    Env,
    Result,
    Side,
    compare,
    e2e_deadline,
    floor_result,
    interleave,
    lpush_side,
    timed,
    wait_until,
)
from .jobs import JOB_NAME, RAW_NAME, SAMPLE, noop

BACKEND = "inngest"
APP_ID = "jobs-bench"
DISPATCH_TARGET = 0.90
BATCH_TARGET = 5.0
E2E_TARGET = 0.90
EXECUTOR_WORKERS = 8


class SharedHits:
    """A completion counter for handlers that run on several threads at once."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.count += 1


def _client(harness: InngestHarness) -> inngest.Inngest:
    return inngest.Inngest(app_id=APP_ID, **harness.client_kwargs())


def run(env: Env) -> list[Result]:
    results: list[Result] = []
    client = env.redis_client()
    try:
        with InngestHarness(workers=EXECUTOR_WORKERS) as harness:
            sdk = _client(harness)
            dispatcher = InngestDispatcher(sdk)
            try:
                results += _dispatch_and_batch(env, harness, sdk, dispatcher, client)
            finally:
                dispatcher.close()
        results.append(_run_e2e(env))
    finally:
        client.close()
    return results


def _dispatch_and_batch(
    env: Env,
    harness: InngestHarness,
    sdk: inngest.Inngest,
    dispatcher: InngestDispatcher,
    client: Any,
) -> list[Result]:
    config = env.config
    send = sdk.send_sync
    event = inngest.Event(name=JOB_NAME, data=dict(SAMPLE))

    def ours(n: int) -> float:
        dispatch = dispatcher.dispatch_sync
        return timed(n, lambda _: dispatch(noop, SAMPLE))

    def raw(n: int) -> float:
        return timed(n, lambda _: send(event))

    def many(n: int) -> float:
        items = [(noop, SAMPLE)] * n
        return timed(1, lambda _: dispatcher.dispatch_many_sync(items))

    # The request body of one of our dispatches: what the floor LPUSHes.
    dispatcher.dispatch_sync(noop, SAMPLE)
    body = json.dumps(harness.event_api_requests[-1].body, separators=(",", ":")).encode()

    results: list[Result] = []
    env.log("inngest: dispatch overhead (+ LPUSH floor), Event API only")
    n = config.dispatch_n
    seconds = interleave(
        {"ours": ours, "raw": raw, "lpush": lpush_side(client, "bench:inngest:floor", body)},
        n,
        config.rounds,
        warmup_n=config.warmup_n,
        slices=config.dispatch_slices,
        progress=env.log,
    )
    results.append(
        compare(
            "dispatch",
            BACKEND,
            n,
            seconds,
            "ours",
            "raw",
            target=DISPATCH_TARGET,
            note="dispatch_sync vs client.send_sync(Event) to the loopback Event API",
        )
    )
    results.append(floor_result(BACKEND, n, seconds))

    env.log("inngest: batch")
    n = config.batch_n
    seconds = interleave(
        {"many": many, "single": ours},
        n,
        config.rounds,
        warmup_n=config.warmup_n,
        progress=env.log,
    )
    results.append(
        compare(
            "batch",
            BACKEND,
            n,
            seconds,
            "many",
            "single",
            target=BATCH_TARGET,
            note="one dispatch_many_sync of n (one request per size-limited chunk) vs n "
            "dispatch_sync",
        )
    )
    return results


def _e2e_side(hits: SharedHits, send: Any, check: Any) -> Side:
    def side(n: int) -> float:
        before = hits.count
        start = time.perf_counter()
        for _ in range(n):
            send()
        wait_until(
            lambda: hits.count - before >= n,
            e2e_deadline(n),
            f"{n} inngest runs",
            check=check,
        )
        elapsed = time.perf_counter() - start
        if hits.count - before != n:
            raise RuntimeError(f"inngest: {hits.count - before} runs counted for {n} events")
        return elapsed

    return side


def _run_e2e(env: Env) -> Result:
    config = env.config
    env.log(f"inngest: end to end (harness executor, {EXECUTOR_WORKERS} calls in flight)")
    ours_hits, raw_hits = SharedHits(), SharedHits()
    with InngestHarness(workers=EXECUTOR_WORKERS) as harness:
        sdk = _client(harness)
        ours_fn = create_inngest_job_function(sdk, noop, ours_hits)

        @sdk.create_function(
            fn_id=RAW_NAME, name=RAW_NAME, trigger=inngest.TriggerEvent(event=RAW_NAME)
        )
        def raw_fn(ctx: inngest.ContextSync) -> None:
            raw_hits.hit()

        app = fastapi.FastAPI()
        serve(app, sdk, [ours_fn, raw_fn])
        dispatcher = InngestDispatcher(sdk)
        try:
            with run_asgi_app(app) as base_url:
                harness.register_app(base_url + "/api/inngest")
                dispatch = dispatcher.dispatch_sync
                send = sdk.send_sync
                raw_event = inngest.Event(name=RAW_NAME, data=dict(SAMPLE))

                def check() -> str | None:
                    errors = harness.errors
                    return "; ".join(errors[-3:]) if errors else None

                sides = {
                    "ours": _e2e_side(ours_hits, lambda: dispatch(noop, SAMPLE), check),
                    "raw": _e2e_side(raw_hits, lambda: send(raw_event), check),
                }
                n = config.inngest_e2e_n
                seconds = interleave(
                    sides, n, config.rounds, warmup_n=config.warmup_n, progress=env.log
                )
        finally:
            dispatcher.close()
    return compare(
        "e2e",
        BACKEND,
        n,
        seconds,
        "ours",
        "raw",
        target=E2E_TARGET,
        note="first event to last completed run; create_inngest_job_function vs a plain "
        "@client.create_function, one served app, harness executor (8 in flight)",
    )
