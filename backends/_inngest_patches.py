"""Where the Inngest SDK (0.5) alone would break a promise, and what stands in for it.

- `EventSender`: the SDK's `send_sync` retries a refused or failing Event API for about 3.4 s
  and then waits up to 30 s per request, so a dispatch could hang far past its timeout (C7);
  it treats Inngest Cloud's 429 (75 requests per 5 s per key) as final; and it drops the
  count of events a 400 says were taken. This posts to the SDK's URL with its headers (event
  key, env) on a connection pool of ours, retries 5xx and 429 (after `Retry-After`) within
  the dispatch timeout, and reports how many events a refusal says were taken.
- `RejectStaleSignatures` (ASGI), `reject_stale_signatures_wsgi`, `reject_stale_signatures_view`
  (Django): the SDK checks each call's signature but not its age, so a captured call could
  be replayed forever (C22). These refuse old signatures with 401 before the SDK runs.
- `mask_event_keys`: the event key travels in the Event API's URL path (`/e/<key>`), which
  httpx logs at INFO (C23). A filter on the `httpx` logger masks it.
- `retry_failure_function`: the SDK registers a function's `on_failure` function with no
  retries, so when the only worker died in a job's last attempt, Inngest's call of the failure
  function, made at once, was refused and the hook never ran (C13). It is registered with
  Inngest's default retries instead.
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import random
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import timedelta
from typing import Any

import httpx
import inngest
from inngest._internal import server_lib

logger = logging.getLogger("jobs_core.backends.inngest")

MAX_SIGNATURE_AGE = timedelta(minutes=5)
"""A signed call older than this (or dated this far ahead) is refused as a replay (C22)."""

_EVENT_KEY_IN_PATH = re.compile(r"/e/[^/\s\"'?#]+")


def redact_event_key(text: str) -> str:
    """`text` with the event key of any Event API URL (`/e/<key>`) replaced by `***` (C23)."""
    return _EVENT_KEY_IN_PATH.sub("/e/***", text)


class _EventKeyFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/e/" in message:
            record.msg, record.args = redact_event_key(message), ()
        return True


def mask_event_keys() -> None:
    """Mask event keys in httpx's request log lines (`HTTP Request: POST .../e/<key>`), once."""
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, _EventKeyFilter) for f in httpx_logger.filters):
        httpx_logger.addFilter(_EventKeyFilter())


class EventApiError(Exception):
    """The Event API refused the events, answered something unreadable, or did not answer.

    `accepted` is how many of the request's first events it took before refusing the rest:
    Inngest handles them one by one, and those it took will run.
    """

    def __init__(self, message: str, accepted: int = 0) -> None:
        super().__init__(message)
        self.accepted = accepted


_SEED_HEADER = "x-inngest-event-id-seed"


class EventSender:
    """Posts events (JSON-ready dicts, each with its own `id`) to the Event API in a deadline.

    A refused connection or a 5xx answer is tried again (the same events, so the same ids:
    Inngest runs an id once), a 429 after its `Retry-After`, while the deadline allows; any
    other 4xx, or an answer that carries an `error`, fails at once.
    """

    def __init__(self, client: inngest.Inngest, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self._http = httpx.Client(timeout=timeout)
        self._target: tuple[httpx.URL, dict[str, str]] | None = None

    def _request(self, body: bytes) -> httpx.Request:
        if self._target is None:
            template = self.client._build_send_request([])
            if isinstance(template, Exception):
                raise template
            # Every event carries an id of ours, so the SDK's id seed (which would make the
            # server's internal ids of two requests collide if reused) is left out.
            skip = {"content-length", _SEED_HEADER}
            headers = {k: v for k, v in template.headers.items() if k.lower() not in skip}
            self._target = (template.url, headers)
        url, headers = self._target
        return httpx.Request("POST", url, headers=headers, content=body)

    def send(self, events: list[bytes]) -> list[str]:
        """Send events (each one serialised to JSON) in one request; the Event API's ids."""
        request = self._request(b"[" + b",".join(events) + b"]")
        deadline = time.monotonic() + self.timeout
        pause = 0.05
        while True:
            remaining = deadline - time.monotonic()
            request.extensions["timeout"] = httpx.Timeout(max(remaining, 0.001)).as_dict()
            wait = pause
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {redact_event_key(str(exc)) or 'no answer'}"
            else:
                if response.status_code == 429:
                    wait = _retry_after(response) or pause
                    failure = f"the Event API is rate limiting this key (429; retry in {wait:g}s)"
                elif response.status_code < 500:
                    return self._ids(response, len(events))
                else:
                    failure = f"the Event API answered {response.status_code}"
            if deadline - time.monotonic() <= wait:
                raise EventApiError(f"{failure} (gave up after {self.timeout:g}s)")
            time.sleep(min(wait * random.uniform(1.0, 1.1), deadline - time.monotonic()))
            pause = min(pause * 2, 1.0)

    @staticmethod
    def _ids(response: httpx.Response, expected: int) -> list[str]:
        try:
            body = response.json()
        except ValueError:
            raise EventApiError(
                f"the Event API answered {response.status_code} with a body that is not JSON"
            ) from None
        error = body.get("error") if isinstance(body, dict) else "an unexpected answer"
        ids = body.get("ids") if isinstance(body, dict) else None
        if response.status_code >= 400 or error:
            taken = [i for i in ids if i] if isinstance(ids, list) else []
            raise EventApiError(
                f"the Event API refused the events ({response.status_code}): "
                f"{redact_event_key(str(error or body))}",
                accepted=len(taken),
            )
        if not isinstance(ids, list) or len(ids) != expected:
            raise EventApiError(f"the Event API returned {ids!r} for {expected} event(s)")
        return [str(i) for i in ids]

    def close(self) -> None:
        self._http.close()


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds a 429's `Retry-After` asks to wait (delta seconds or an HTTP date)."""
    value = response.headers.get("retry-after", "").strip()
    if value.replace(".", "", 1).isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


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
