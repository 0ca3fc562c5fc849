"""Serving the jobs from FastAPI, Flask and Django, through the stand-in: each framework runs
sync and async jobs (a sync job with no event loop running, as Django's ORM needs), and in
production mode each refuses a replayed (stale) signed call with 401 (C22)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import inngest
import pytest

from jobs_core import JobRegistry
from jobs_core.backends.inngest import (
    InngestDispatcher,
    create_inngest_functions,
    serve,
    serve_django,
    serve_flask,
)
from tests.inngest.app import Greeting
from tests.inngest_harness import InngestHarness, run_asgi_app, run_wsgi_app

pytestmark = pytest.mark.timeout(60)

FRAMEWORKS = ["fastapi", "flask", "django"]
SIGNING_KEY = "signkey-prod-" + "4c" * 32
EVENT_KEY = "evtkey-frameworks"
WAIT = 15.0


@contextlib.contextmanager
def served(framework: str, client: inngest.Inngest, registry: JobRegistry[Any]) -> Iterator[str]:
    """Serve `registry` from an app of `framework`; yield the serve URL."""
    functions = create_inngest_functions(registry, context=None, client=client)
    if framework == "fastapi":
        import fastapi

        asgi = fastapi.FastAPI()
        serve(asgi, client, functions)
        with run_asgi_app(asgi) as base:
            yield base + "/api/inngest"
    elif framework == "flask":
        import flask

        app = flask.Flask(__name__)
        serve_flask(app, client, functions, serve_path="/jobs/inngest")
        with run_wsgi_app(app) as base:
            yield base + "/jobs/inngest"
    else:
        with django_app([serve_django(client, functions)]) as app, run_wsgi_app(app) as base:
            yield base + "/api/inngest"


@contextlib.contextmanager
def django_app(patterns: list[Any]) -> Iterator[Any]:
    import django
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.test.utils import override_settings
    from django.urls import clear_url_caches

    from tests.inngest import django_urls

    if not settings.configured:
        settings.configure(SECRET_KEY="frameworks-test", INSTALLED_APPS=[], MIDDLEWARE=[])
        django.setup()
    django_urls.urlpatterns[:] = patterns
    clear_url_caches()
    overrides = {"ROOT_URLCONF": "tests.inngest.django_urls", "ALLOWED_HOSTS": ["*"]}
    with override_settings(**overrides):
        yield get_wsgi_application()
    django_urls.urlpatterns[:] = []
    clear_url_caches()


def _registry(kind: str, seen: list[tuple[str, bool]]) -> JobRegistry[Any]:
    registry: JobRegistry[Any] = JobRegistry()

    def loop_running() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    if kind == "sync":

        @registry.job("web.greet")
        def greet(payload: Greeting, ctx: Any) -> None:
            seen.append((payload.name, loop_running()))

    else:

        @registry.job("web.greet")
        async def greet_async(payload: Greeting, ctx: Any) -> None:
            seen.append((payload.name, loop_running()))

    return registry


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_framework_serves_sync_and_async_jobs(framework: str, kind: str) -> None:
    seen: list[tuple[str, bool]] = []
    registry = _registry(kind, seen)
    with InngestHarness() as harness:
        client = inngest.Inngest(app_id=f"web-{framework}", **harness.client_kwargs())
        with served(framework, client, registry) as url:
            [fn] = harness.register_app(url)
            assert fn.id == f"web-{framework}-web.greet"
            with contextlib.closing(InngestDispatcher(client)) as dispatcher:
                receipt = dispatcher.dispatch_sync(registry.get("web.greet"), {"name": kind})
            [run] = harness.wait_for_runs(1, timeout=WAIT)
    assert run.status == "completed", run
    assert run.event["id"] == receipt.dispatch_id
    assert seen == [(kind, kind == "async")]  # a sync job runs with no event loop


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_framework_refuses_replayed_calls_in_production(framework: str) -> None:
    seen: list[tuple[str, bool]] = []
    registry = _registry("sync", seen)
    with InngestHarness(signing_key=SIGNING_KEY, event_key=EVENT_KEY) as harness:
        client = inngest.Inngest(app_id=f"prod-{framework}", **harness.client_kwargs())
        with served(framework, client, registry) as url:
            [fn] = harness.register_app(url)
            with contextlib.closing(InngestDispatcher(client)) as dispatcher:
                dispatcher.dispatch_sync(registry.get("web.greet"), {"name": "signed"})
            [run] = harness.wait_for_runs(1, timeout=WAIT)
            assert run.status == "completed" and all(a.signature_valid for a in run.attempts)

            body = json.dumps(run.attempts[0].request).encode()
            now = int(time.time())
            for stamp in (now - 360, now + 360):
                stale = {"x-inngest-signature": harness.sign(body, timestamp=stamp)}
                answer = httpx.post(fn.url, content=body, headers=stale, timeout=WAIT)
                assert answer.status_code == 401, (stamp - now, answer.text)
            assert httpx.post(fn.url, content=body, timeout=WAIT).status_code == 401  # unsigned
            assert seen == [("signed", False)], "a refused call ran the job"
            fresh = {"x-inngest-signature": harness.sign(body)}
            assert httpx.post(fn.url, content=body, headers=fresh, timeout=WAIT).status_code == 200
    assert seen == [("signed", False), ("signed", False)]


def test_the_inngest_extra_needs_no_fastapi(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Django app installs `jobs-core[inngest-django]`: the adapter imports, dispatches and
    serves without FastAPI or uvicorn, and only the FastAPI helpers name the extra they need."""
    import sys

    from jobs_core import JobConfigError

    for name in ("fastapi", "uvicorn", "inngest.fast_api"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m.startswith("jobs_core.backends.")]:
        monkeypatch.delitem(sys.modules, name)
    import jobs_core.backends.inngest as adapter

    client = inngest.Inngest(app_id="no-fastapi", is_production=False)
    functions = adapter.create_inngest_functions(_registry("sync", []), context=None, client=client)
    with django_app([adapter.serve_django(client, functions)]):
        pass
    adapter.InngestDispatcher(client).close()
    with pytest.raises(JobConfigError, match=r"jobs-core\[inngest-fastapi\]"):
        adapter.create_inngest_app(JobRegistry(), context=None, client=client)
    with pytest.raises(JobConfigError, match=r"jobs-core\[inngest-fastapi\]"):
        adapter.serve(object(), client, functions)  # type: ignore[arg-type]
