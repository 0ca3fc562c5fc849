"""Self-check of the Inngest stand-in server against plain SDK functions (no jobs_core).

Each test starts its own harness and serves its own app, and both stop at the end of the test.
Every wait has a deadline; nothing sleeps.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import inngest
import pytest
from inngest._internal import errors as inngest_errors
from inngest._internal import net

from tests.inngest_harness import (
    FUNCTION_FAILED_EVENT,
    InngestHarness,
    serve_functions,
    sign_body,
)
from tests.inngest_harness.protocol import parse_retry_after

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
SIGNING_KEY = "signkey-test-" + "ab12" * 16


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Every server a test starts is stopped by the end of the test."""
    yield
    ours = ("inngest-harness", "uvicorn-")
    left = [t.name for t in threading.enumerate() if t.name.startswith(ours)]
    assert left == []


@pytest.fixture
def harness() -> Iterator[InngestHarness]:
    with InngestHarness(retry_delay=0.01) as h:
        yield h


def dev_client(h: InngestHarness, app_id: str) -> inngest.Inngest:
    return inngest.Inngest(
        app_id=app_id,
        is_production=False,
        event_api_base_url=h.event_api_url,
        api_base_url=h.api_url,
    )


def idle_function(client: inngest.Inngest, fn_id: str, retries: int) -> inngest.Function[None]:
    """A function that does nothing, triggered by `selfcheck/<fn_id>`: for the tests of what
    the server does when the app that registered it does not answer."""

    @client.create_function(
        fn_id=fn_id, retries=retries, trigger=inngest.TriggerEvent(event=f"selfcheck/{fn_id}")
    )
    def idle(ctx: inngest.ContextSync) -> None: ...

    return idle


def test_event_runs_function_once_and_completes(harness: InngestHarness) -> None:
    client = dev_client(harness, "harness-selfcheck")

    @client.create_function(fn_id="hello", trigger=inngest.TriggerEvent(event="selfcheck/hello"))
    def hello(ctx: inngest.ContextSync) -> dict[str, Any]:
        return {"x": ctx.event.data["x"], "attempt": ctx.attempt, "run_id": ctx.run_id}

    @client.create_function(
        fn_id="hello-async", trigger=inngest.TriggerEvent(event="selfcheck/hello")
    )
    async def hello_async(ctx: inngest.Context) -> str:
        return f"async {ctx.event.data['x']}"

    with serve_functions(client, [hello, hello_async]) as url:
        registered = harness.register_app(url)
        assert {f.id for f in registered} == {
            "harness-selfcheck-hello",
            "harness-selfcheck-hello-async",
        }
        assert registered[0].url.startswith(url + "?fnId=harness-selfcheck-")
        assert registered[0].retries_configured is None and registered[0].retries == 4
        app = harness.apps[-1]
        assert app.sync_kind == "out_of_band" and app.url == url

        [event_id] = client.send_sync(inngest.Event(name="selfcheck/hello", data={"x": 7}))
        runs = harness.wait_for_runs(2, timeout=WAIT)

    by_fn = {r.function_id: r for r in runs}
    sync_run = by_fn[hello.id]
    assert sync_run.status == "completed"
    assert sync_run.output == {"x": 7, "attempt": 0, "run_id": sync_run.run_id}
    assert sync_run.attempt_numbers == [0]
    assert sync_run.event["id"] == event_id
    assert sync_run.attempts[0].step_id == "step"
    assert by_fn[hello_async.id].output == "async 7"
    [event] = harness.events
    assert (event.name, event.data, event.id, event.internal_id) == (
        "selfcheck/hello",
        {"x": 7},
        event_id,  # an id-less event's id is the internal one the Event API answered with
        event_id,
    )
    assert harness.event_api_requests[-1].event_key == "NO_EVENT_KEY_SET"


def test_steps_are_memoised_across_calls(harness: InngestHarness) -> None:
    client = dev_client(harness, "harness-selfcheck")
    calls: list[str] = []

    def step_body(name: str, value: int) -> int:
        calls.append(name)
        return value

    @client.create_function(fn_id="steps", trigger=inngest.TriggerEvent(event="selfcheck/steps"))
    def steps(ctx: inngest.ContextSync) -> int:
        a = ctx.step.run("a", step_body, "a", 1)
        b = ctx.step.run("b", step_body, "b", 2)
        return a + b

    with serve_functions(client, [steps]) as url:
        harness.register_app(url)
        client.send_sync(inngest.Event(name="selfcheck/steps"))
        [run] = harness.wait_for_runs(1, timeout=WAIT)

    assert run.status == "completed" and run.output == 3
    assert calls == ["a", "b"]  # each step ran once; later calls got the memoised value
    assert [a.status_code for a in run.attempts] == [206, 206, 200]
    assert [v["data"] for v in run.steps.values()] == [1, 2]


def test_non_retriable_error_runs_once(harness: InngestHarness) -> None:
    client = dev_client(harness, "harness-selfcheck")

    @client.create_function(
        fn_id="fatal", retries=3, trigger=inngest.TriggerEvent(event="selfcheck/fatal")
    )
    def fatal(ctx: inngest.ContextSync) -> None:
        raise inngest.NonRetriableError("no point retrying")

    with serve_functions(client, [fatal]) as url:
        harness.register_app(url)
        client.send_sync(inngest.Event(name="selfcheck/fatal"))
        [run] = harness.wait_for_runs(1, timeout=WAIT)

    assert run.status == "failed"
    assert run.attempt_numbers == [0]
    assert run.attempts[0].status_code == 500
    assert run.attempts[0].headers["x-inngest-no-retry"] == "true"
    assert run.error["message"] == "no point retrying"


def test_retries_then_on_failure(harness: InngestHarness) -> None:
    client = dev_client(harness, "harness-selfcheck")

    def on_failure(ctx: inngest.ContextSync) -> dict[str, Any]:
        return {
            "name": ctx.event.name,
            "function_id": ctx.event.data["function_id"],
            "run_id": ctx.event.data["run_id"],
            "message": ctx.event.data["error"]["message"],  # type: ignore[index,call-overload]
            "original": ctx.event.data["event"]["data"],  # type: ignore[index,call-overload]
        }

    @client.create_function(
        fn_id="flaky",
        retries=2,
        on_failure=on_failure,
        trigger=inngest.TriggerEvent(event="selfcheck/flaky"),
    )
    def flaky(ctx: inngest.ContextSync) -> None:
        raise RuntimeError(f"boom {ctx.attempt}")

    with serve_functions(client, [flaky]) as url:
        registered = {f.id: f for f in harness.register_app(url)}
        failure_id = f"{flaky.id}-failure"
        assert registered[flaky.id].retries == 2
        assert registered[failure_id].retries_configured == 0
        assert registered[failure_id].triggers == [
            {
                "event": FUNCTION_FAILED_EVENT,
                "expression": f"event.data.function_id == '{flaky.id}'",
            }
        ]
        client.send_sync(inngest.Event(name="selfcheck/flaky", data={"k": 1}))
        [run] = harness.wait_for_runs(1, timeout=WAIT, function_id=flaky.id)
        [failure_run] = harness.wait_for_runs(1, timeout=WAIT, function_id=failure_id)

    assert run.status == "failed"
    assert run.attempt_numbers == [0, 1, 2]
    assert [a.request["ctx"]["max_attempts"] for a in run.attempts] == [3, 3, 3]
    assert run.error["message"] == "boom 2"
    assert failure_run.status == "completed"
    assert failure_run.output == {
        "name": FUNCTION_FAILED_EVENT,
        "function_id": flaky.id,
        "run_id": run.run_id,
        "message": "boom 2",
        "original": {"k": 1},
    }
    assert failure_run.event["id"] == run.failure_event_id
    assert [e.internal for e in harness.events] == [False, True]


def test_retry_after_is_read_as_inngest_reads_it(harness: InngestHarness) -> None:
    """A wait of 1 s or more is kept to the millisecond; a shorter one becomes the next whole
    second plus one, which can be sooner than asked (seen on a real Dev Server)."""
    client = dev_client(harness, "harness-selfcheck")
    waits = {"short": 0.3, "long": 1.2}

    @client.create_function(
        fn_id="later", retries=1, trigger=inngest.TriggerEvent(event="selfcheck/later")
    )
    def later(ctx: inngest.ContextSync) -> int:
        if ctx.attempt == 0:
            wait = datetime.timedelta(seconds=waits[ctx.event.data["wait"]])
            raise inngest.RetryAfterError("not yet", retry_after=wait)
        return ctx.attempt

    with serve_functions(client, [later]) as url:
        harness.register_app(url)
        client.send_sync([inngest.Event(name="selfcheck/later", data={"wait": w}) for w in waits])
        runs = harness.wait_for_runs(2, timeout=WAIT)

    by_wait = {r.event["data"]["wait"]: r for r in runs}
    for run in runs:
        assert run.status == "completed" and run.output == 1
    first, second = by_wait["short"].attempts
    assert first.status_code == 500 and "retry-after" in first.headers
    assert second.started_at >= math.floor(first.finished_at or 0) + 1
    assert second.started_at - (first.finished_at or 0) <= 1.0 + 0.2
    first, second = by_wait["long"].attempts
    # retry-after is an ISO time truncated to the millisecond: allow 1 ms.
    assert second.started_at - first.started_at >= 1.2 - 0.001


def test_retry_after_bounds() -> None:
    now = 1_000_000.75
    assert parse_retry_after("2", now=now) == 1_000_002.0  # whole seconds from this second
    assert parse_retry_after("1970-01-12T13:46:40.900Z", now=now) == 1_000_001.0  # < 1 s
    assert parse_retry_after("1970-01-12T13:46:42.500Z", now=now) == 1_000_002.5  # kept
    assert parse_retry_after("1970-01-14T13:46:42Z", now=now) == 1_000_000 + 24 * 3600  # cut
    assert parse_retry_after("soon", now=now) is None


def test_duplicate_event_id_runs_once(harness: InngestHarness) -> None:
    client = dev_client(harness, "harness-selfcheck")

    @client.create_function(fn_id="once", trigger=inngest.TriggerEvent(event="selfcheck/once"))
    def once(ctx: inngest.ContextSync) -> str:
        return "ran"

    with serve_functions(client, [once]) as url:
        harness.register_app(url)
        ids_1 = client.send_sync(inngest.Event(name="selfcheck/once", id="order-42"))
        ids_2 = client.send_sync(inngest.Event(name="selfcheck/once", id="order-42"))
        runs = harness.wait_until_idle(timeout=WAIT)

    # The Event API answers with ids it mints, never the sender's; it does not say that the
    # second event was a repeat, but the function runs once, and both events are stored.
    assert "order-42" not in ids_1 + ids_2 and ids_1 != ids_2
    assert len(runs) == 1 and runs[0].status == "completed"
    assert [e.id for e in harness.events] == ["order-42", "order-42"]
    assert [e.internal_id for e in harness.events] == ids_1 + ids_2


def test_future_ts_runs_no_earlier(harness: InngestHarness) -> None:
    client = dev_client(harness, "harness-selfcheck")

    @client.create_function(fn_id="timed", trigger=inngest.TriggerEvent(event="selfcheck/timed"))
    def timed(ctx: inngest.ContextSync) -> int:
        return int(time.time() * 1000)

    with serve_functions(client, [timed]) as url:
        harness.register_app(url)
        ts = int(time.time() * 1000) + 1200
        client.send_sync(inngest.Event(name="selfcheck/timed", ts=ts))
        assert harness.runs()[0].attempts == []  # accepted, not started
        [run] = harness.wait_for_runs(1, timeout=WAIT)

    assert run.status == "completed"
    assert run.attempts[0].started_at * 1000 >= ts
    assert run.output >= ts


def test_event_api_wire_format_and_misbehaviour() -> None:
    with InngestHarness(event_key="test-key") as h:
        event_api_url = h.event_api_url
        single = httpx.post(f"{h.event_api_url}/e/test-key", json={"name": "a/b", "data": {}})
        assert single.status_code == 200
        body = single.json()
        assert body["status"] == 200 and len(body["ids"]) == 1

        wrong = httpx.post(f"{h.event_api_url}/e/other", json=[{"name": "a/b"}])
        assert wrong.status_code == 401

        bad_client = inngest.Inngest(
            app_id="harness-selfcheck",
            is_production=False,
            event_key="other",
            event_api_base_url=h.event_api_url,
        )
        with pytest.raises(inngest_errors.SendEventsError):
            bad_client.send_sync(inngest.Event(name="a/b"))  # 4xx: raised at once

        h.fail_event_api(500, times=1, accept=True)  # events taken, answer lost
        good_client = inngest.Inngest(app_id="harness-selfcheck", **h.client_kwargs())
        ids = good_client.send_sync(inngest.Event(name="a/c"))  # the SDK resends after the 500
        statuses = [r.status for r in h.event_api_requests]
        assert statuses[-2:] == [500, 200]
        # The resend carries the same id seed, so the id-less event keeps its id (and runs once).
        c_events = [e for e in h.events if e.name == "a/c"]
        assert len(c_events) == 2 and {e.id for e in c_events} == set(ids)
        assert h.start_run("harness-selfcheck-missing") is not None
        [unknown] = h.runs("harness-selfcheck-missing")
        assert unknown.status == "failed"
    with pytest.raises(httpx.ConnectError):  # stopped: the port is closed
        httpx.post(f"{event_api_url}/e/test-key", json=[{"name": "a/b"}], timeout=2)


def test_signature_matches_sdk_signer() -> None:
    body = json.dumps({"b": [1, 2.5, "é"], "a": None}).encode()
    assert sign_body(body, SIGNING_KEY, timestamp=1700000000) == net.sign_request(
        body, SIGNING_KEY, 1700000000
    )


def test_production_mode_signed_calls_and_unsigned_rejected() -> None:
    with InngestHarness(signing_key=SIGNING_KEY, event_key="test-key") as h:
        client = inngest.Inngest(
            app_id="harness-selfcheck-prod",
            is_production=True,
            signing_key=SIGNING_KEY,
            event_key="test-key",
            event_api_base_url=h.event_api_url,
            api_base_url=h.api_url,
        )

        @client.create_function(fn_id="prod", trigger=inngest.TriggerEvent(event="selfcheck/prod"))
        def prod(ctx: inngest.ContextSync) -> str:
            return ctx.step.run("s", lambda: "signed ok")

        with serve_functions(client, [prod]) as url:
            [fn] = h.register_app(url)  # out-of-band: harness checks the bearer hash
            assert h.apps[-1].headers["authorization"].startswith("Bearer ")
            [fn_in_band] = h.register_app(url, in_band=True)
            assert fn_in_band.id == fn.id and h.apps[-1].sync_kind == "in_band"
            assert h.inspect(url)["authentication_succeeded"] is True

            client.send_sync(inngest.Event(name="selfcheck/prod"))
            [run] = h.wait_for_runs(1, timeout=WAIT)
            assert run.status == "completed" and run.output == "signed ok"
            assert all(a.signature_valid for a in run.attempts)

            request = json.dumps(run.attempts[0].request).encode()
            unsigned = httpx.post(fn.url, content=request)
            assert unsigned.status_code == 401
            forged = httpx.post(
                fn.url,
                content=request,
                headers={"x-inngest-signature": sign_body(request, "signkey-test-" + "cd" * 32)},
            )
            assert forged.status_code == 401
            signed = httpx.post(
                fn.url, content=request, headers={"x-inngest-signature": h.sign(request)}
            )
            assert signed.status_code == 206


def test_events_are_taken_one_by_one_and_a_bad_one_stops_the_request() -> None:
    with InngestHarness(max_event_bytes=300) as h:
        url = f"{h.event_api_url}/e/key"
        good = {"name": "a/ok", "data": {}}
        refused = {
            "inngest/ prefix": {"name": "Inngest/function.failed"},
            "long name": {"name": "n" * 256},
            "ts before 1980": {"name": "a/b", "ts": 315_532_799_999},
            "ts after 2100": {"name": "a/b", "ts": 4_102_444_800_001},
            "too big": {"name": "a/b", "data": {"x": "y" * 300}},
            "data not an object": {"name": "a/b", "data": [1]},
        }
        for what, bad in refused.items():
            answer = httpx.post(url, json=[good, bad, good])
            assert answer.status_code == 400, what
            body = answer.json()
            assert body["status"] == 400 and body["error"], what
            assert len(body["ids"]) == 1 and body["ids"][0], what  # the first one was taken
        first = httpx.post(url, json=[refused["long name"], good]).json()
        assert first["ids"] == [""]  # as Inngest answers when the first event is refused
        assert [e.name for e in h.events] == ["a/ok"] * len(refused)
        assert httpx.post(url, json={"name": "n" * 255}).status_code == 200
        assert httpx.post(url, content=b"{not json").status_code == 400


def test_rate_limit_answers_429_with_whole_seconds_to_wait() -> None:
    with InngestHarness(rate_limit=(2, 3.0)) as h:
        url = f"{h.event_api_url}/e/key"
        answers = [httpx.post(url, json={"name": "a/b"}) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].headers["retry-after"] in {"2", "3"}
        assert httpx.post(f"{h.event_api_url}/e/other-key", json={"name": "a/b"}).is_success
        assert len(h.events) == 3


def test_a_function_the_app_no_longer_serves_is_retried(harness: InngestHarness) -> None:
    client = dev_client(harness, "harness-selfcheck")
    kept = idle_function(client, "kept", retries=2)
    with serve_functions(client, [kept]) as url:
        [fn] = harness.register_app(url)
        gone = json.loads(json.dumps(fn.raw).replace(fn.id, "harness-selfcheck-gone"))
        gone["triggers"] = [{"event": "selfcheck/gone"}]
        registered = httpx.post(
            f"{harness.api_url}/fn/register",
            json={"appname": "an-old-deploy", "url": url, "functions": [gone]},
        )
        assert registered.status_code == 200
        client.send_sync(inngest.Event(name="selfcheck/gone"))
        [run] = harness.wait_for_runs(1, timeout=WAIT, function_id="harness-selfcheck-gone")

    assert run.status == "failed" and run.attempt_numbers == [0, 1, 2]
    assert run.error["code"] == "function_not_found"
    assert run.failure_event_id is not None


def test_a_call_without_an_answer_is_a_failed_attempt_retried_with_backoff() -> None:
    """Refused calls (nobody listens at the registered URL) spend attempts, as on Inngest, and
    each retry waits `retry_backoff` times longer than the one before."""
    with InngestHarness(retry_delay=0.05, retry_backoff=2.0, max_retry_delay=0.15) as h:
        client = dev_client(h, "harness-selfcheck")
        absent = idle_function(client, "absent", retries=3)
        with serve_functions(client, [absent]) as url:
            [fn] = h.register_app(url)
        # The app is gone; the server keeps calling the URL it registered.
        client.send_sync(inngest.Event(name="selfcheck/absent"))
        [run] = h.wait_for_runs(1, timeout=WAIT, function_id=fn.id)

    assert run.status == "failed" and run.attempt_numbers == [0, 1, 2, 3]
    assert all(a.status_code is None and a.transport_error for a in run.attempts)
    gaps = [b.started_at - (a.finished_at or 0) for a, b in itertools.pairwise(run.attempts)]
    for gap, wait in zip(gaps, [0.05, 0.1, 0.15], strict=True):  # the last one capped
        assert wait - 0.01 <= gap <= wait + 0.5
    assert run.failure_event_id is not None


def test_pause_keeps_the_state_and_resume_serves_the_same_port() -> None:
    """A restart of the server: the port closed and no call made while it is down; the events,
    the runs and a retry that fell due meanwhile are all there after it comes back."""
    with InngestHarness(retry_delay=0.01) as h:
        client = dev_client(h, "harness-selfcheck")

        @client.create_function(
            fn_id="echo", retries=1, trigger=inngest.TriggerEvent(event="selfcheck/echo")
        )
        def echo(ctx: inngest.ContextSync) -> int:
            if ctx.event.data.get("later") and ctx.attempt == 0:
                raise inngest.RetryAfterError("later", retry_after=datetime.timedelta(seconds=1))
            return int(ctx.event.data["x"])

        with serve_functions(client, [echo]) as url:
            h.register_app(url)
            client.send_sync(inngest.Event(name="selfcheck/echo", data={"x": 1}))
            client.send_sync(inngest.Event(name="selfcheck/echo", data={"x": 2, "later": True}))
            h.wait_for_runs(lambda runs: sum(len(r.attempts) for r in runs) == 2, timeout=WAIT)
            port = h.port
            h.wait_for_runs(lambda runs: all(a.finished_at for r in runs for a in r.attempts), WAIT)

            h.pause()
            paused_at = time.time()
            assert h.paused
            with pytest.raises(httpx.ConnectError):
                httpx.post(f"{h.event_api_url}/e/key", json={"name": "selfcheck/echo"})
            with pytest.raises(TimeoutError):  # the retry falls due 1 s on; nothing calls
                h.wait_for_runs(2, timeout=1.5)
            h.resume()
            resumed_at = time.time()

            assert not h.paused and h.port == port
            client.send_sync(inngest.Event(name="selfcheck/echo", data={"x": 3}))
            runs = h.wait_for_runs(3, timeout=WAIT)

    by_x = {r.event["data"]["x"]: r for r in runs}
    assert [by_x[x].output for x in (1, 2, 3)] == [1, 2, 3]
    assert by_x[2].attempt_numbers == [0, 1]
    assert (by_x[2].attempts[0].finished_at or 0) < paused_at
    assert by_x[2].attempts[1].started_at >= resumed_at
    assert len(h.events) == 3
