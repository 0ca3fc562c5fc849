"""The Inngest backend against the rules of the real Inngest server, through the stand-in that
applies them (BACKEND_NOTES, "What the real Inngest server does"): rate limits, ids the Event
API mints, events taken one by one, what it refuses, whole-second retries."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import datetime, timedelta, timezone
from typing import Any

import inngest
import pytest

from jobs_core import (
    DispatchError,
    JobConfigError,
    JobPayloadError,
    JobRegistry,
    JobsSettings,
    PermanentError,
    Retry,
    RetryLater,
)
from jobs_core.backends.inngest import (
    InngestDispatcher,
    create_dispatcher,
    create_inngest_app,
    create_inngest_job_function,
)
from jobs_core.backends.inngest.functions import MAX_RETRY_WAIT, SETTLEMENT
from jobs_core.testing import RecordingInstrumentation
from jobs_core.worker import Delivery
from tests.inngest.app import Greeting, greet
from tests.inngest_harness import InngestHarness, run_asgi_app

pytestmark = pytest.mark.timeout(120)
WAIT = 20.0


def _dispatcher(harness: InngestHarness, **options: Any) -> InngestDispatcher:
    client = inngest.Inngest(app_id="rules", **harness.client_kwargs())
    return InngestDispatcher(client, **options)


@pytest.fixture
def events() -> RecordingInstrumentation:
    return RecordingInstrumentation()


# -- 1. a 429 is not a lost dispatch ---------------------------------------------------------


def test_a_burst_over_the_rate_limit_loses_no_dispatch(events: RecordingInstrumentation) -> None:
    """500 single dispatches from 10 threads against 75 requests per window: every one gets a
    receipt, and the Event API stores each once. (Cloud's window is 5 s; 1 s keeps the test
    short: the client only sees 429 and a whole-second Retry-After either way.)"""
    with InngestHarness(rate_limit=(75, 1.0)) as harness:
        dispatcher = _dispatcher(harness, timeout=30.0, instrumentation=events)
        try:
            with ThreadPoolExecutor(10) as pool:
                receipts = list(
                    pool.map(
                        lambda i: dispatcher.dispatch_sync(greet, {"name": str(i)}), range(500)
                    )
                )
        finally:
            dispatcher.close()
        statuses = [r.status for r in harness.event_api_requests]
        stored = harness.events
    assert statuses.count(429) > 0, "the burst did hit the limit"
    assert statuses.count(200) == 500
    assert len({r.dispatch_id for r in receipts}) == 500
    assert sorted(e.id for e in stored) == sorted(r.dispatch_id for r in receipts)
    assert sorted(int(e.data["name"]) for e in stored) == list(range(500))
    assert events.kinds("inngest.greet").count("scheduled") == 500
    assert "failed" not in events.kinds("inngest.greet")


def test_a_batch_is_one_request_under_the_rate_limit() -> None:
    with InngestHarness(rate_limit=(75, 5.0)) as harness:
        dispatcher = _dispatcher(harness)
        try:
            receipts = dispatcher.dispatch_many_sync(
                [(greet, {"name": str(i)}) for i in range(500)]
            )
        finally:
            dispatcher.close()
        assert [r.status for r in harness.event_api_requests] == [200]
        assert [e.id for e in harness.events] == [r.dispatch_id for r in receipts]


def test_a_429_whose_wait_outlasts_the_timeout_fails_at_once(
    events: RecordingInstrumentation,
) -> None:
    with InngestHarness(rate_limit=(1, 60.0)) as harness:
        dispatcher = _dispatcher(harness, timeout=2.0, instrumentation=events)
        try:
            dispatcher.dispatch_sync(greet, {"name": "first"})
            started = time.monotonic()
            with pytest.raises(DispatchError, match="429") as caught:
                dispatcher.dispatch_sync(greet, {"name": "second"})
            assert time.monotonic() - started < 1.0, "it did not wait for a minute"
        finally:
            dispatcher.close()
    assert caught.value.job_name == "inngest.greet"
    assert events.kinds("inngest.greet") == ["scheduled", "failed"]


# -- 3. partial acceptance, and what the Event API would refuse ------------------------------


def test_a_batch_taken_in_part_says_which_dispatches_will_run(
    events: RecordingInstrumentation,
) -> None:
    """The stand-in refuses events over 2,000 bytes (a stricter plan than the dispatcher was
    told about): the event before the big one is taken and runs, and the error says so."""
    registry: JobRegistry[Any] = JobRegistry()
    ran: list[str] = []

    @registry.job("rules.greet", retry=Retry(attempts=0))
    def handler(payload: Greeting, ctx: Any) -> None:
        ran.append(payload.name)

    with InngestHarness(max_event_bytes=2_000) as harness:
        client = inngest.Inngest(app_id="rules", **harness.client_kwargs())
        with run_asgi_app(create_inngest_app(registry, context=None, client=client)) as url:
            harness.register_app(url + "/api/inngest")
            dispatcher = InngestDispatcher(client, instrumentation=events)
            try:
                batch = [(handler, {"name": n}) for n in ("before", "x" * 3_000, "after")]
                with pytest.raises(DispatchError) as caught:
                    dispatcher.dispatch_many_sync(batch)
            finally:
                dispatcher.close()
            harness.wait_for_runs(1, timeout=WAIT)
    [accepted] = caught.value.accepted
    assert "1 of 3 jobs were accepted" in str(caught.value)
    assert [e.id for e in harness.events] == [accepted.dispatch_id]
    assert ran == ["before"]
    assert [e.kind for e in events.for_job("rules.greet") if e.phase == "schedule"] == [
        "scheduled",
        "failed",
        "failed",
    ]


@pytest.mark.parametrize("name", ["inngest/greet", "Inngest/greet", "n" * 256])
def test_a_name_inngest_refuses_is_refused_by_the_dispatcher_and_the_worker(name: str) -> None:
    registry: JobRegistry[Any] = JobRegistry()
    bad = registry.define_job(name, payload=Greeting, handle=lambda p, c: None)
    registry.define_job("a.neighbour", payload=Greeting, handle=lambda p, c: None)
    with InngestHarness() as harness:
        dispatcher = _dispatcher(harness)
        try:
            with pytest.raises(JobConfigError, match=r"option 'name' .* \(inngest backend\)"):
                dispatcher.dispatch_sync(bad, {"name": "x"})
            with pytest.raises(JobConfigError, match="option 'name'"):
                dispatcher.dispatch_many_sync([(greet, {"name": "ok"}), (bad, {"name": "x"})])
        finally:
            dispatcher.close()
        assert harness.event_api_requests == []
        # Served, the name would make the whole app fail to sync: refused when it is built.
        client = inngest.Inngest(app_id="rules", **harness.client_kwargs())
        with pytest.raises(JobConfigError, match="option 'name'"):
            create_inngest_app(registry, context=None, client=client)
    assert len(JobRegistry().define_job("n" * 255, payload=Greeting, handle=print).name) == 255


def test_what_the_event_api_would_refuse_is_refused_before_sending(
    events: RecordingInstrumentation,
) -> None:
    with InngestHarness() as harness:
        dispatcher = _dispatcher(harness, max_payload_bytes=1_000, instrumentation=events)
        try:
            # The payload fits the limit, the event (with its name and id) does not.
            with pytest.raises(JobPayloadError, match=r"the event is 10\d\d bytes") as caught:
                dispatcher.dispatch_sync(greet, {"name": "x" * 960})
            assert caught.value.errors[0]["type"] == "event_too_large"
            with pytest.raises(DispatchError, match="INNGEST_MAX_DELAY"):
                dispatcher.dispatch_sync(greet, {"name": "x"}, delay=timedelta(days=8))
            far = _dispatcher(harness, max_delay=timedelta(days=365 * 200))
            with pytest.raises(DispatchError, match="after 2100"):
                far.dispatch_sync(
                    greet, {"name": "x"}, run_at=datetime(2101, 1, 1, tzinfo=timezone.utc)
                )
            far.close()
            assert harness.event_api_requests == []
            # A start time already past is "now": sent without a ts the server would refuse.
            dispatcher.dispatch_sync(
                greet, {"name": "x"}, run_at=datetime(1970, 1, 2, tzinfo=timezone.utc)
            )
        finally:
            dispatcher.close()
        assert [r.status for r in harness.event_api_requests] == [200]
        assert "ts" not in harness.event_api_requests[0].body[0]
    assert events.kinds("inngest.greet") == ["failed", "failed", "scheduled"]


def test_inngest_max_delay_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INNGEST_DEV", "1")
    with InngestHarness() as harness:
        monkeypatch.setenv("INNGEST_EVENT_API_BASE_URL", harness.event_api_url)
        default = create_dispatcher(JobsSettings(backend="inngest"))
        monkeypatch.setenv("INNGEST_MAX_DELAY", "P365D")
        paid = create_dispatcher(JobsSettings(backend="inngest"))
        try:
            assert default.max_delay == timedelta(days=7)
            assert paid.max_delay == timedelta(days=365)
            paid.dispatch_sync(greet, {"name": "later"}, delay=timedelta(days=30))
        finally:
            default.close()
            paid.close()
        [event] = harness.events
        assert event.ts >= (time.time() + 29 * 86_400) * 1000


# -- 4. whole-second retries ------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.6, 1.0, 2.5])
def test_a_retry_is_asked_for_at_a_whole_second_never_before_the_wait(delay: float) -> None:
    before = datetime.now(timezone.utc)
    with pytest.raises(inngest.RetryAfterError) as caught:
        SETTLEMENT.retry(Delivery("a.job", {}), timedelta(seconds=delay))
    at = caught.value.retry_after
    assert at.microsecond == 0
    assert at >= before + timedelta(seconds=delay)
    assert at - before < timedelta(seconds=delay + 1.1)


def test_waits_inngest_would_cut_are_refused() -> None:
    """Inngest cuts a retry's wait to 24 h: a retry policy that waits longer is refused when
    the function is built, and a longer `RetryLater` gives up, saying why."""
    registry: JobRegistry[Any] = JobRegistry()
    slow = registry.define_job(
        "rules.slow",
        payload=Greeting,
        handle=lambda p, c: None,
        retry=Retry(attempts=3, min_backoff=timedelta(hours=10), max_backoff=timedelta(days=2)),
    )
    client = inngest.Inngest(app_id="rules", is_production=False)
    with pytest.raises(JobConfigError, match="option 'retry' waits up to 1 day, 16:00:00"):
        create_inngest_job_function(client, slow, context=None)
    assert MAX_RETRY_WAIT == timedelta(hours=23, minutes=59, seconds=59)

    failures: list[BaseException] = []
    events = RecordingInstrumentation()
    served: JobRegistry[Any] = JobRegistry()

    @served.job(
        "rules.later", retry=Retry(attempts=2), on_failure=lambda e, p, c: failures.append(e)
    )
    def later(payload: Greeting, ctx: Any) -> None:
        raise RetryLater(timedelta(hours=25))

    with InngestHarness() as harness:
        client = inngest.Inngest(app_id="rules", **harness.client_kwargs())
        app = create_inngest_app(served, context=None, client=client, instrumentation=events)
        with run_asgi_app(app) as url:
            harness.register_app(url + "/api/inngest")
            with closing(InngestDispatcher(client)) as dispatcher:
                dispatcher.dispatch_sync(later, {"name": "tomorrow"})
            [run] = harness.wait_for_runs(1, timeout=WAIT, function_id="rules-rules.later")
            harness.wait_for_runs(1, timeout=WAIT, function_id="rules-rules.later-failure")
    assert run.status == "failed" and run.attempt_numbers == [0]
    [error] = failures  # once: the failure function saw that the core gave up itself
    assert isinstance(error, PermanentError) and isinstance(error.__cause__, RetryLater)
    assert "longer than this backend waits between attempts (23:59:59)" in str(error)
    assert events.kinds("rules.later") == ["started", "failed"]
