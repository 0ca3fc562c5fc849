"""Serving the Inngest functions from FastAPI, Flask or Django.

The SDK's own helpers (`inngest.fast_api`, `inngest.flask`, `inngest.django`) do the serving;
these add what they leave out, the same for every framework: in production mode a missing
signing key fails at start-up, and a signed call older than `max_signature_age` is refused as
a replay (C22). Each framework is an extra of its own (`jobs-core[inngest-fastapi]`,
`[inngest-flask]`, `[inngest-django]`), so a Django app does not install FastAPI.
"""

from __future__ import annotations

import argparse
import importlib
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import inngest
from inngest._internal import errors as sdk_errors

from jobs_core.backend import missing_extra
from jobs_core.config import JobsSettings
from jobs_core.errors import JobConfigError
from jobs_core.instrumentation import Instrumentation
from jobs_core.jobs.registry import JobRegistry
from jobs_core.worker import ContextSource

from .dispatcher import create_inngest_client, require_key
from .fixes import (
    MAX_SIGNATURE_AGE,
    RejectStaleSignatures,
    logger,
    reject_stale_signatures_view,
    reject_stale_signatures_wsgi,
)
from .functions import create_inngest_functions

if TYPE_CHECKING:
    import fastapi
    import flask
    from django.urls import URLPattern

DEFAULT_SERVE_PATH = "/api/inngest"


def _helper(module: str, extra: str, client: inngest.Inngest | None) -> Any:
    """`module` (a framework or the SDK's helper for it), or a `JobConfigError` naming the
    extra to install; with `client`, first the signing-key check."""
    if client is not None:
        why = "signs every call to the served functions, and they cannot be checked without it"
        require_key(client, "_signing_key", "INNGEST_SIGNING_KEY", why)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_extra("inngest", extra, exc.name or module) from exc


def _serve(helper: Any, *args: Any, serve_path: str) -> Any:
    try:
        return helper.serve(*args, serve_path=serve_path)
    except sdk_errors.Error as exc:
        raise JobConfigError(f"cannot serve the Inngest functions: {exc}") from exc


def serve(
    app: fastapi.FastAPI,
    client: inngest.Inngest,
    functions: list[inngest.Function[Any]],
    *,
    serve_path: str | None = None,
    max_signature_age: timedelta = MAX_SIGNATURE_AGE,
) -> None:
    """Serve `functions` from a FastAPI (or Starlette) app at `serve_path` (`/api/inngest`)."""
    helper = _helper("inngest.fast_api", "inngest-fastapi", client)
    path = serve_path or DEFAULT_SERVE_PATH
    _serve(helper, app, client, functions, serve_path=path)
    if client.is_production:
        app.add_middleware(RejectStaleSignatures, path=path, max_age=max_signature_age)


def serve_flask(
    app: flask.Flask,
    client: inngest.Inngest,
    functions: list[inngest.Function[Any]],
    *,
    serve_path: str | None = None,
    max_signature_age: timedelta = MAX_SIGNATURE_AGE,
) -> None:
    """Serve `functions` from a Flask app (async jobs need `flask[async]`, in the extra)."""
    helper = _helper("inngest.flask", "inngest-flask", client)
    path = serve_path or DEFAULT_SERVE_PATH
    _serve(helper, app, client, functions, serve_path=path)
    if client.is_production:
        app.wsgi_app = reject_stale_signatures_wsgi(  # type: ignore[method-assign,assignment]
            app.wsgi_app, path, max_signature_age
        )


def serve_django(
    client: inngest.Inngest,
    functions: list[inngest.Function[Any]],
    *,
    serve_path: str | None = None,
    max_signature_age: timedelta = MAX_SIGNATURE_AGE,
) -> URLPattern:
    """The URL pattern that serves `functions` from Django: add it to `urlpatterns`.

    Sync jobs are served by a sync view, which Django runs without an event loop (its ORM
    needs that); a registry with async jobs gets an async view (Django 5 or later).
    """
    helper = _helper("inngest.django", "inngest-django", client)
    path = serve_path or DEFAULT_SERVE_PATH
    pattern: URLPattern = _serve(helper, client, functions, serve_path=path)
    if not client.is_production:
        return pattern
    from django.urls import path as route

    view = reject_stale_signatures_view(pattern.callback, max_signature_age)
    guarded: URLPattern = route(str(pattern.pattern), view, name=pattern.name)
    return guarded


def create_inngest_app(
    registry: JobRegistry[Any],
    *,
    context: ContextSource,
    client: inngest.Inngest | None = None,
    instrumentation: Instrumentation | None = None,
    serve_path: str | None = None,
    settings: JobsSettings | None = None,
) -> fastapi.FastAPI:
    """A FastAPI app that serves every job of `registry` as an Inngest function."""
    framework = _helper("fastapi", "inngest-fastapi", None)
    client = client or create_inngest_client(settings)
    app: fastapi.FastAPI = framework.FastAPI(title=f"{client.app_id} jobs")
    functions = create_inngest_functions(
        registry, context=context, instrumentation=instrumentation, client=client
    )
    serve(app, client, functions, serve_path=serve_path)
    return app


def run_worker(
    registry: JobRegistry[Any],
    *,
    context: ContextSource,
    settings: JobsSettings,
    argv: list[str],
) -> int:
    """Serve `registry` with uvicorn until interrupted (`python -m jobs_core worker`)."""
    uvicorn = _helper("uvicorn", "inngest-fastapi", None)
    parser = argparse.ArgumentParser(prog="python -m jobs_core worker APP:REGISTRY --")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument("--path", default=DEFAULT_SERVE_PATH, help="serve path (/api/inngest)")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    args = parser.parse_args(list(argv))
    app = create_inngest_app(
        registry,
        context=context,
        settings=settings,
        serve_path=args.path,
    )
    logger.info(
        "serving %d job(s) at http://%s:%d%s", len(registry), args.host, args.port, args.path
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
