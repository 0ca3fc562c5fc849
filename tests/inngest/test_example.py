"""The Inngest example app (examples/inngest/app.py) works as its README says: a signup
dispatches the welcome job, and the same app runs it when Inngest calls back."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.inngest_harness import InngestHarness, run_asgi_app

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def example_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, InngestHarness]]:
    with InngestHarness() as harness:
        monkeypatch.setenv("JOBS_BACKEND", "inngest")
        monkeypatch.setenv("INNGEST_DEV", "1")
        monkeypatch.setenv("INNGEST_APP_NAME", "quickstart")
        monkeypatch.setenv("INNGEST_API_BASE_URL", harness.api_url)
        monkeypatch.setenv("INNGEST_EVENT_API_BASE_URL", harness.event_api_url)
        monkeypatch.delitem(sys.modules, "examples.inngest.app", raising=False)
        module = importlib.import_module("examples.inngest.app")
        try:
            yield module, harness
        finally:
            module.dispatcher.close()
            sys.modules.pop("examples.inngest.app", None)


def test_signup_dispatches_the_welcome_job_and_the_app_runs_it(
    example_app: tuple[Any, InngestHarness],
) -> None:
    module, harness = example_app
    with run_asgi_app(module.app) as base_url:
        functions = harness.register_app(base_url + "/api/inngest")
        assert {f.id for f in functions} == {
            "quickstart-mail.welcome",
            "quickstart-contacts.import",
            "quickstart-billing.charge",
            "quickstart-billing.charge-failure",  # on_failure's safety net
        }
        answer = httpx.post(f"{base_url}/signup", json={"email": "ada@example.com"}, timeout=10)
        assert answer.status_code == 200
        [run] = harness.wait_for_runs(1, timeout=10)
    assert run.function_id == "quickstart-mail.welcome" and run.status == "completed"
    assert run.event["id"] == answer.json()["welcome_job"]
    assert run.event["data"] == {"email": "ada@example.com"}
