"""C22 and C23 on Inngest, in production mode: signed calls only, no replays, no keys in logs.

The stand-in acts as Inngest Cloud (it signs every call with the signing key); the app is the
one `jobs_core.backends.inngest.create_inngest_app` builds, served under uvicorn.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import inngest
import pytest

from jobs_core import DispatchError, JobRegistry, JobsSettings
from jobs_core.backends.inngest import InngestDispatcher, create_inngest_app
from jobs_core.testing import RecordingInstrumentation
from tests.inngest.app import Greeting
from tests.inngest_harness import InngestHarness, run_asgi_app, sign_body

pytestmark = pytest.mark.timeout(60)

SIGNING_KEY = "signkey-prod-" + "5e" * 32
EVENT_KEY = "evtkey-" + "9f3a" * 8
WAIT = 10.0


class Calls:
    def __init__(self) -> None:
        self.names: list[str] = []


@pytest.fixture
def production() -> Iterator[tuple[InngestHarness, InngestDispatcher, str, Calls]]:
    calls = Calls()
    registry: JobRegistry[Any] = JobRegistry()

    @registry.job("secure.greet")
    def greet(payload: Greeting, ctx: Any) -> None:
        calls.names.append(payload.name)

    with InngestHarness(signing_key=SIGNING_KEY, event_key=EVENT_KEY) as harness:
        client = inngest.Inngest(app_id="secure", **harness.client_kwargs())
        assert client.is_production
        app = create_inngest_app(registry, context=None, client=client)
        with run_asgi_app(app) as base_url:
            [fn] = harness.register_app(base_url + "/api/inngest")
            dispatcher = InngestDispatcher(client, instrumentation=RecordingInstrumentation())
            try:
                yield harness, dispatcher, fn.url, calls
            finally:
                dispatcher.close()


def test_C22_unsigned_forged_and_replayed_calls_get_401_and_run_nothing(
    production: tuple[InngestHarness, InngestDispatcher, str, Calls],
) -> None:
    harness, dispatcher, fn_url, calls = production
    dispatcher.dispatch_sync(dispatcher_job(), {"name": "signed"})
    [run] = harness.wait_for_runs(1, timeout=WAIT)
    assert run.status == "completed" and calls.names == ["signed"]
    assert all(a.signature_valid for a in run.attempts)

    body = json.dumps(run.attempts[0].request).encode()
    now = int(time.time())
    refused = {
        "unsigned": {},
        "wrong key": {"x-inngest-signature": sign_body(body, "signkey-prod-" + "77" * 32)},
        "replayed (6 min old)": {"x-inngest-signature": harness.sign(body, timestamp=now - 360)},
        "dated 6 min ahead": {"x-inngest-signature": harness.sign(body, timestamp=now + 360)},
        "no timestamp": {"x-inngest-signature": "s=" + "00" * 32},
    }
    for what, headers in refused.items():
        answer = httpx.post(fn_url, content=body, headers=headers, timeout=WAIT)
        assert answer.status_code == 401, (what, answer.status_code, answer.text)
    assert calls.names == ["signed"], "a refused call ran the job"

    fresh = httpx.post(
        fn_url, content=body, headers={"x-inngest-signature": harness.sign(body)}, timeout=WAIT
    )
    assert fresh.status_code == 200  # the control: a fresh signature is accepted and runs
    assert calls.names == ["signed", "signed"]


def dispatcher_job() -> Any:
    """The producer's view of the job: its name and model only, no worker handler."""
    registry: JobRegistry[Any] = JobRegistry()
    return registry.define_job("secure.greet", payload=Greeting, handle=lambda p, c: None)


def test_C23_no_key_in_logs_reprs_or_errors(
    production: tuple[InngestHarness, InngestDispatcher, str, Calls],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness, dispatcher, _, calls = production
    caplog.set_level(logging.DEBUG)
    job = dispatcher_job()
    dispatcher.dispatch_sync(job, {"name": "a"})
    dispatcher.dispatch_many_sync([(job, {"name": "b"}), (job, {"name": "c"})])
    harness.wait_for_runs(3, timeout=WAIT)
    texts = [repr(dispatcher), repr(dispatcher.inngest), repr(dispatcher.client)]
    for status in (401, 500):
        harness.fail_event_api(status)
        with pytest.raises(DispatchError) as caught:
            dispatcher.dispatch_sync(job, {"name": "refused"})
        texts += [str(caught.value), repr(caught.value)]
    harness.reset_event_api()
    monkeypatch.setenv("INNGEST_EVENT_KEY", EVENT_KEY)
    monkeypatch.setenv("INNGEST_SIGNING_KEY", SIGNING_KEY)
    texts.append(repr(JobsSettings(backend="inngest")))

    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert any("/e/***" in t for t in texts), "httpx logged the Event API URL, masked"
    secrets = [EVENT_KEY, SIGNING_KEY, SIGNING_KEY.removeprefix("signkey-prod-")]
    leaks = [(s, t) for t in texts for s in secrets if s in t]
    assert leaks == []
    assert sorted(calls.names) == ["a", "b", "c"]
