"""Where the Inngest SDK (0.5) alone would break a promise, and what stands in for it.

- `EventSender`: the SDK's `send_sync` retries a refused or failing Event API for about 3.4 s
  and then waits up to 30 s per request, so a dispatch could hang far past its timeout (C7).
  This sends the SDK's own request (`Inngest._build_send_request`: URL, event key, headers) on
  a connection pool of ours, retried within the dispatch timeout.
- `RejectStaleSignatures`: the SDK checks each call's signature but not its age, so a captured
  call could be replayed forever (C22). This ASGI middleware refuses old signatures with 401.
- `mask_event_keys`: the event key travels in the Event API's URL path (`/e/<key>`), which
  httpx logs at INFO (C23). A filter on the `httpx` logger masks it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import timedelta
from typing import Any

import httpx
import inngest

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
    """The Event API refused the events, answered something unreadable, or did not answer."""


class EventSender:
    """Posts events to the Event API with the SDK's request, within a deadline.

    A refused connection or a 5xx answer is tried again (the same request, so the same id
    seed: Inngest does not store the events twice) while the deadline allows; a 4xx answer,
    or an answer that carries an `error`, fails at once.
    """

    def __init__(self, client: inngest.Inngest, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self._http = httpx.Client(timeout=timeout)

    def send(self, events: list[inngest.Event]) -> list[str]:
        request = self.client._build_send_request(events)
        if isinstance(request, Exception):
            raise request
        deadline = time.monotonic() + self.timeout
        pause = 0.05
        while True:
            remaining = deadline - time.monotonic()
            request.extensions["timeout"] = httpx.Timeout(max(remaining, 0.001)).as_dict()
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {redact_event_key(str(exc)) or 'no answer'}"
            else:
                if response.status_code < 500:
                    return self._ids(response, len(events))
                failure = f"the Event API answered {response.status_code}"
            if deadline - time.monotonic() <= pause:
                raise EventApiError(f"{failure} (gave up after {self.timeout:g}s)")
            time.sleep(pause)
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
            raise EventApiError(
                f"the Event API refused the events ({response.status_code}): "
                f"{redact_event_key(str(error or body))}"
            )
        if not isinstance(ids, list) or len(ids) != expected:
            raise EventApiError(f"the Event API returned {ids!r} for {expected} event(s)")
        return [str(i) for i in ids]

    def close(self) -> None:
        self._http.close()


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


class RejectStaleSignatures:
    """ASGI middleware: 401 for a signed call to `path` whose signature is older than
    `max_age`, or dated as far in the future: a replayed request (C22).

    It runs before the SDK; calls without a signature pass, and the SDK refuses them in
    production mode.
    """

    def __init__(self, app: ASGIApp, path: str, max_age: timedelta = MAX_SIGNATURE_AGE) -> None:
        self.app = app
        self.path = path
        self.max_age = max_age.total_seconds()

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
            if header is not None:
                age = signature_age(header)
                if age is None or abs(age) > self.max_age:
                    logger.warning(
                        "refused a call to %s: its signature is %s",
                        self.path,
                        "unreadable" if age is None else f"{age:.0f}s old",
                    )
                    await _send_json(send, 401, {"error": "signature expired or unreadable"})
                    return
        await self.app(scope, receive, send)


async def _send_json(send: Callable[[Any], Awaitable[None]], status: int, body: Any) -> None:
    content = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
