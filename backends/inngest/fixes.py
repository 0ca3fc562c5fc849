"""Where the Inngest SDK (0.5) serving jobs alone would break a promise, and the fix.

- `RejectStaleSignatures` (ASGI), `reject_stale_signatures_wsgi`, `reject_stale_signatures_view`
  (Django): the SDK checks each call's signature but not its age, so a captured call could
  be replayed forever (C22). These refuse old signatures with 401 before the SDK runs. Test:
  tests/inngest/test_security.py.
- `retry_failure_function`: the SDK registers a function's `on_failure` function with no
  retries, so when the only worker died in a job's last attempt, Inngest's call of the failure
  function, made at once, was refused and the hook never ran (C13). It is registered with
  Inngest's default retries instead. Test: tests/inngest/test_failure_net.py.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import timedelta
from typing import Any

import inngest
from inngest._internal import server_lib

logger = logging.getLogger("jobs_core.backends.inngest")

MAX_SIGNATURE_AGE = timedelta(minutes=5)
"""A signed call older than this (or dated this far ahead) is refused as a replay (C22)."""


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def signature_age(header: str, now: float | None = None) -> float | None:
    """Seconds since the `t=` of an `X-Inngest-Signature` header; None when it has none."""
    values = urllib.parse.parse_qs(header).get("t")
    try:
        signed_at = int(values[0]) if values else None
    except ValueError:
        return None
    return None if signed_at is None else (time.time() if now is None else now) - signed_at


_REFUSAL = {"error": "signature expired or unreadable"}


def is_stale(header: str | None, path: str, max_age: timedelta) -> bool:
    """True (and logged) for a signature older than `max_age` or dated as far ahead: a
    replayed call. A call without one passes: the SDK refuses it in production mode."""
    if header is None:
        return False
    age = signature_age(header)
    if age is not None and abs(age) <= max_age.total_seconds():
        return False
    reason = "unreadable" if age is None else f"{age:.0f}s old"
    logger.warning("refused a call to %s: its signature is %s", path, reason)
    return True


class RejectStaleSignatures:
    """ASGI middleware: 401 for a call to `path` whose signature is stale (see `is_stale`),
    before the SDK runs it (C22)."""

    def __init__(self, app: ASGIApp, path: str, max_age: timedelta = MAX_SIGNATURE_AGE) -> None:
        self.app = app
        self.path = path
        self.max_age = max_age

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope.get("type") == "http" and scope.get("path") == self.path:
            header = next(
                (
                    v.decode("latin-1")
                    for k, v in scope.get("headers", [])
                    if k.decode("latin-1").lower() == "x-inngest-signature"
                ),
                None,
            )
            if is_stale(header, self.path, self.max_age):
                content = json.dumps(_REFUSAL).encode()
                headers = [(b"content-type", b"application/json")]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": content})
                return
        await self.app(scope, receive, send)


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def reject_stale_signatures_wsgi(app: WSGIApp, path: str, max_age: timedelta) -> WSGIApp:
    """The same check as WSGI middleware (Flask: `app.wsgi_app = ...(app.wsgi_app, ...)`)."""

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        header = environ.get("HTTP_X_INNGEST_SIGNATURE")
        if environ.get("PATH_INFO") == path and is_stale(header, path, max_age):
            start_response("401 Unauthorized", [("content-type", "application/json")])
            return [json.dumps(_REFUSAL).encode()]
        return app(environ, start_response)

    return middleware


def reject_stale_signatures_view(view: Callable[..., Any], max_age: timedelta) -> Any:
    """The same check around a Django view (sync or async, as the SDK made it)."""
    from asgiref.sync import iscoroutinefunction
    from django.http import JsonResponse

    def stale(request: Any) -> bool:
        return is_stale(request.headers.get("X-Inngest-Signature"), request.path, max_age)

    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def checked_async(request: Any, *args: Any, **kwargs: Any) -> Any:
            if stale(request):
                return JsonResponse(_REFUSAL, status=401)
            return await view(request, *args, **kwargs)

        return checked_async

    @functools.wraps(view)
    def checked(request: Any, *args: Any, **kwargs: Any) -> Any:
        if stale(request):
            return JsonResponse(_REFUSAL, status=401)
        return view(request, *args, **kwargs)

    return checked


FAILURE_FUNCTION_RETRIES = 4
"""Retries of a job's failure function (Inngest's default for a function)."""


def retry_failure_function(
    fn: inngest.Function[Any], retries: int = FAILURE_FUNCTION_RETRIES
) -> inngest.Function[Any]:
    """`fn`, its failure function (if it has one) registered with `retries` instead of the
    SDK's 0.

    The failure function is the `on_failure` safety net for a run Inngest failed without the
    worker's answer, typically because the worker died in the job's last attempt. Inngest calls
    it at once, while that worker is still down when it was the only one: with no retries the
    refused call failed it for good and the hook never ran. The hook's own errors never fail it
    (the core logs them), so a retry only follows a call that got no answer.
    """
    get_config = fn.get_config

    def config_with_retries(app_url: str) -> Any:
        config = get_config(app_url)
        if config.on_failure is not None:
            for step in config.on_failure.steps.values():
                step.retries = server_lib.Retries(attempts=retries)
        return config

    fn.get_config = config_with_retries  # type: ignore[method-assign]
    return fn
