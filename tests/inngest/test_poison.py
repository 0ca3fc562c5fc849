"""Poison events on Inngest (issue: reliability): malformed event data put on the stand-in's
Event API by hand, bypassing `dispatch`. Each bad event ends as one failed run (not retried),
is logged with its job name and event id, calls `on_failure` once, and a normal job sent after
them completes. What Inngest itself refuses (a body that is not JSON, data that is not an
object, an event over its size limit) never reaches the app: the Event API answers 400."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import inngest
import pytest

from jobs_core import JobPayloadError, JobRegistry, Retry
from jobs_core.backends.inngest import InngestDispatcher, create_inngest_app
from jobs_core.instrumentation import LoggingInstrumentation, MultiInstrumentation
from jobs_core.testing import RecordingInstrumentation
from tests.inngest.app import Greeting
from tests.inngest_harness import InngestHarness, run_asgi_app

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0


def test_poison_events_fail_once_each_and_the_app_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry: JobRegistry[Any] = JobRegistry()
    done: list[str] = []
    failures: list[tuple[BaseException, Any]] = []

    @registry.job(
        "poison.greet",
        retry=Retry(attempts=3),
        on_failure=lambda error, payload, ctx: failures.append((error, payload)),
    )
    def greet(payload: Greeting, ctx: Any) -> None:
        done.append(payload.name)

    bad_data: list[dict[str, Any]] = [
        {"name": 123},  # wrong type
        {"unexpected": True},  # wrong shape: the field is missing
        {"name": {"nested": ["deep"] * 1000}},  # wrong type, large
    ]
    caplog.set_level(logging.ERROR)
    events = RecordingInstrumentation()
    with InngestHarness() as harness:
        client = inngest.Inngest(app_id="poison", **harness.client_kwargs())
        worker_events = MultiInstrumentation(events, LoggingInstrumentation())  # the default logs
        app = create_inngest_app(
            registry, context=None, client=client, instrumentation=worker_events
        )
        with run_asgi_app(app) as base_url:
            harness.register_app(base_url + "/api/inngest")
            ids = [
                client.send_sync(inngest.Event(name="poison.greet", data=d))[0] for d in bad_data
            ]

            raw = f"{harness.event_api_url}/e/any"
            refused = [
                httpx.post(raw, content=b"{not json", timeout=WAIT),
                httpx.post(raw, json=[{"name": "poison.greet", "data": [1, 2]}], timeout=WAIT),
                httpx.post(raw, json=[{"name": "poison.greet", "data": "text"}], timeout=WAIT),
            ]
            dispatcher = InngestDispatcher(client, instrumentation=events)
            try:
                dispatcher.dispatch_sync(greet, {"name": "after the poison"})
            finally:
                dispatcher.close()
            runs = harness.wait_for_runs(4, timeout=WAIT)

    assert [r.status_code for r in refused] == [400, 400, 400]
    by_event = {r.event["id"]: r for r in runs}
    for event_id in ids:
        run = by_event[event_id]
        assert run.status == "failed" and run.attempt_numbers == [0], run
        assert run.attempts[0].headers.get("x-inngest-no-retry") == "true"
        assert any(
            "poison.greet" in r.getMessage() and event_id in r.getMessage() for r in caplog.records
        ), f"no log line names the job and event {event_id}"
    assert done == ["after the poison"]
    assert [p for _, p in failures] == bad_data
    assert all(isinstance(e, JobPayloadError) for e, _ in failures)
    assert events.kinds("poison.greet").count("failed") == 3
    assert "retrying" not in events.kinds("poison.greet")
