"""Inngest dispatch and batch rates with the stand-in's Event API rate limit off and on.

    python -m benchmarks.inngest_rate_limit [--jobs 300] [--limit 75/5]

Inngest Cloud answers 429 above 75 requests per 5 s per event key. With the limit on, single
dispatches wait out each 429 (so their rate is the limit's), a `dispatch_many` is one request,
and the SDK's own `send_sync`, which takes a 429 as final, loses what it cannot send. The
stand-in is a Python HTTP server: the ratios are meaningful, the absolute rates are not
Inngest Cloud's.
"""

from __future__ import annotations

import argparse
import time

import inngest
from inngest._internal import errors as sdk_errors

from jobs_core.backends.inngest import InngestDispatcher
from tests.inngest_harness import InngestHarness

from .jobs import JOB_NAME, SAMPLE, noop


def _measure(limit: tuple[int, float] | None, jobs: int) -> dict[str, str]:
    """One fresh stand-in per side, so each starts with an empty rate window."""
    row: dict[str, str] = {"limit": f"{limit[0]} per {limit[1]:g} s" if limit else "off"}
    for side in ("dispatch_sync", "dispatch_many", "sdk send_sync"):
        with InngestHarness(rate_limit=limit) as harness:
            client = inngest.Inngest(app_id="bench-rate", **harness.client_kwargs())
            dispatcher = InngestDispatcher(client, timeout=120.0)
            start = time.perf_counter()
            try:
                sent = _run(side, dispatcher, client, jobs)
            finally:
                dispatcher.close()
            elapsed = time.perf_counter() - start
            throttled = sum(r.status == 429 for r in harness.event_api_requests)
        row[side] = f"{sent / elapsed:,.0f}/s ({sent}/{jobs} sent, {throttled} x 429)"
    return row


def _run(name: str, dispatcher: InngestDispatcher, client: inngest.Inngest, jobs: int) -> int:
    if name == "dispatch_sync":
        for _ in range(jobs):
            dispatcher.dispatch_sync(noop, SAMPLE)
        return jobs
    if name == "dispatch_many":
        return len(dispatcher.dispatch_many_sync([(noop, SAMPLE)] * jobs))
    sent = 0
    for _ in range(jobs):
        try:
            client.send_sync(inngest.Event(name=JOB_NAME, data=dict(SAMPLE)))
            sent += 1
        except sdk_errors.SendEventsError:
            pass  # a 429: the SDK does not try again, the event is lost
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inngest_rate_limit")
    parser.add_argument("--jobs", type=int, default=300, help="dispatches per side")
    parser.add_argument("--limit", default="75/5", help="requests/seconds (Cloud: 75/5)")
    args = parser.parse_args()
    count, seconds = args.limit.split("/")
    for limit in (None, (int(count), float(seconds))):
        row = _measure(limit, args.jobs)
        print(" | ".join(f"{k}: {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
