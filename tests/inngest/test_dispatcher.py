"""The Inngest dispatcher against the loopback Event API: wire format, chunking, failures (C7),
production-mode configuration errors, and the raw-event escape hatch."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import inngest
import pytest

from jobs_core import DispatchError, JobConfigError, JobPayloadError, JobsSettings
from jobs_core.backends.inngest import (
    InngestDispatcher,
    create_dispatcher,
    create_inngest_app,
    event_id_for,
)
from jobs_core.testing import RecordingInstrumentation
from tests.inngest.app import Greeting, greet, jobs
from tests.inngest_harness import InngestHarness

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def harness() -> Iterator[InngestHarness]:
    with InngestHarness() as h:
        yield h


@pytest.fixture
def events() -> RecordingInstrumentation:
    return RecordingInstrumentation()


@pytest.fixture
def dispatcher(
    harness: InngestHarness, events: RecordingInstrumentation
) -> Iterator[InngestDispatcher]:
    client = inngest.Inngest(app_id="dispatch-test", **harness.client_kwargs())
    made = InngestDispatcher(client, instrumentation=events, timeout=1.5)
    yield made
    made.close()


def test_one_event_per_dispatch_with_name_data_ts_and_id(
    harness: InngestHarness, dispatcher: InngestDispatcher
) -> None:
    plain = dispatcher.dispatch_sync(greet, {"name": "ada"})
    before = int(time.time() * 1000)
    delayed = dispatcher.dispatch_sync(greet, Greeting(name="bob"), delay=timedelta(seconds=30))
    keyed = dispatcher.dispatch_sync(greet, {"name": "cy"}, idempotency_key="k1")

    first, second, third = harness.events
    assert (first.name, first.data) == ("inngest.greet", {"name": "ada"})
    assert plain.dispatch_id == first.id and plain.backend == "inngest"
    assert second.ts >= before + 30_000 and delayed.dispatch_id == second.id
    assert third.id == event_id_for("inngest.greet", "k1") == keyed.dispatch_id
    requests = harness.event_api_requests
    assert [r.status for r in requests] == [200, 200, 200]
    # Every event carries the id the producer chose; the Event API answers with its own.
    assert [r.body[0]["id"] for r in requests] == [e.id for e in (first, second, third)]
    answered = [i for r in requests for i in r.response["ids"]]
    assert answered == [e.internal_id for e in harness.events]
    assert not set(answered) & {plain.dispatch_id, delayed.dispatch_id, keyed.dispatch_id}


def test_a_repeated_key_is_left_to_inngest_from_any_process(
    harness: InngestHarness, dispatcher: InngestDispatcher
) -> None:
    """No local memory of keys: every keyed dispatch is one event with the id `<job>:<key>`,
    and Inngest runs one of them; the receipts cannot know which were dropped."""
    client = inngest.Inngest(app_id="dispatch-test", **harness.client_kwargs())
    other = InngestDispatcher(client)  # another process
    try:
        first = dispatcher.dispatch_sync(greet, {"name": "a"}, idempotency_key="k")
        again = dispatcher.dispatch_sync(greet, {"name": "a"}, idempotency_key="k")
        elsewhere = other.dispatch_sync(greet, {"name": "a"}, idempotency_key="k")
    finally:
        other.close()
    key_id = event_id_for("inngest.greet", "k")
    assert [r.dispatch_id for r in (first, again, elsewhere)] == [key_id] * 3
    assert not any(r.deduplicated for r in (first, again, elsewhere))
    assert [e.id for e in harness.events] == [key_id] * 3


def test_dispatch_many_sends_one_request_per_size_limited_chunk(
    harness: InngestHarness, events: RecordingInstrumentation
) -> None:
    client = inngest.Inngest(app_id="dispatch-test", **harness.client_kwargs())
    small = InngestDispatcher(client, instrumentation=events, max_request_bytes=4096)
    big = InngestDispatcher(client, instrumentation=events)
    try:
        names = [f"person-{i:03d}-" + "x" * 150 for i in range(100)]
        receipts = small.dispatch_many_sync([(greet, {"name": n}) for n in names])
        chunked_requests = len(harness.event_api_requests)
        big.dispatch_many_sync([(greet, {"name": str(i)}) for i in range(1000)])
    finally:
        small.close()
        big.close()

    assert chunked_requests > 1
    sizes = [len(json.dumps(r.body)) for r in harness.event_api_requests[:chunked_requests]]
    assert max(sizes) <= 4096, sizes
    assert [e.data["name"] for e in harness.events[:100]] == names  # in order, none lost
    assert [r.dispatch_id for r in receipts] == [e.id for e in harness.events[:100]]
    assert len(harness.event_api_requests) == chunked_requests + 1  # 1,000 in one request
    assert events.kinds("inngest.greet").count("scheduled") == 1100


def test_a_request_holds_up_to_the_event_apis_limit_not_one_events(
    harness: InngestHarness,
) -> None:
    """Requests are cut at the Event API's per-request limit (512 KB); the per-event limit
    (JOBS_MAX_PAYLOAD_BYTES, 256 KiB) is another, checked on each event."""
    client = inngest.Inngest(app_id="dispatch-test", **harness.client_kwargs())
    dispatcher = InngestDispatcher(client)
    names = [str(i) * 150_000 for i in range(3)]  # three events of about 150 KB
    try:
        dispatcher.dispatch_many_sync([(greet, {"name": n}) for n in names])
        with pytest.raises(JobPayloadError, match="JOBS_MAX_PAYLOAD_BYTES"):
            dispatcher.dispatch_sync(greet, {"name": "x" * 300_000})
    finally:
        dispatcher.close()
    assert len(harness.event_api_requests) == 1
    assert [e.data["name"] for e in harness.events] == names


@pytest.mark.parametrize(
    ("status", "body"),
    [(400, None), (401, None), (500, None), (502, "<html>bad gateway</html>")],
    ids=["400", "401", "500", "502-not-json"],
)
def test_a_refusing_event_api_is_a_dispatch_error_within_the_timeout(
    harness: InngestHarness,
    dispatcher: InngestDispatcher,
    events: RecordingInstrumentation,
    status: int,
    body: str | None,
) -> None:
    harness.fail_event_api(status, body=body)
    started = time.monotonic()
    with pytest.raises(DispatchError) as caught:
        dispatcher.dispatch_sync(greet, {"name": "x"})
    elapsed = time.monotonic() - started
    assert caught.value.job_name == "inngest.greet"
    assert str(status) in str(caught.value)
    assert elapsed < dispatcher.timeout + 0.5
    if status < 500:
        assert len(harness.event_api_requests) == 1  # a 4xx is not tried again
    assert events.kinds("inngest.greet") == ["failed"]
    assert harness.events == []  # a refused request stores nothing


def test_a_lost_answer_is_retried_without_storing_the_event_twice(
    harness: InngestHarness, dispatcher: InngestDispatcher
) -> None:
    harness.fail_event_api(500, times=1, accept=True)  # events taken, answer lost
    receipt = dispatcher.dispatch_sync(greet, {"name": "once"})
    assert [r.status for r in harness.event_api_requests] == [500, 200]
    # Sent twice with the same id, which Inngest runs once (see the conformance C9).
    assert [e.id for e in harness.events] == [receipt.dispatch_id] * 2


def test_escape_hatch_sends_raw_events_instrumented(
    harness: InngestHarness, dispatcher: InngestDispatcher, events: RecordingInstrumentation
) -> None:
    port = dispatcher.inngest
    assert port.client is dispatcher.client
    event_id = port.send_sync("app/user.signed_up", {"user": 7})
    [event] = harness.events
    assert (event.name, event.data, event.id) == ("app/user.signed_up", {"user": 7}, event_id)
    assert [(e.kind, e.phase, e.dispatch_id) for e in events.for_job("app/user.signed_up")] == [
        ("scheduled", "schedule", event_id)
    ]
    harness.fail_event_api(400)
    with pytest.raises(DispatchError):
        port.send_sync("app/user.signed_up", {"user": 8})
    assert events.kinds("app/user.signed_up") == ["scheduled", "failed"]


async def test_escape_hatch_async_send(
    harness: InngestHarness, dispatcher: InngestDispatcher
) -> None:
    event_id = await dispatcher.inngest.send("app/async", {"n": 1})
    assert [e.id for e in harness.events] == [event_id]
    receipt = await dispatcher.dispatch(greet, {"name": "from a loop"})
    assert receipt.dispatch_id == harness.events[1].id


def test_production_mode_without_event_key_fails_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("INNGEST_DEV", "INNGEST_EVENT_KEY", "INNGEST_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(JobConfigError, match="INNGEST_EVENT_KEY"):
        create_dispatcher(JobsSettings(backend="inngest"))
    with pytest.raises(JobConfigError, match="INNGEST_SIGNING_KEY"):
        create_inngest_app(jobs, context=None)
    monkeypatch.setenv("INNGEST_DEV", "1")
    create_dispatcher(JobsSettings(backend="inngest")).close()  # dev mode needs no key
