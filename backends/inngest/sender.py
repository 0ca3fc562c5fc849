"""How a dispatch reaches Inngest's Event API: jobs_core's own sender, in place of the SDK's.

The SDK's `send_sync` retries a refused or failing Event API for about 3.4 s and then waits up
to 30 s per request, so a dispatch could hang far past its timeout (C7); it treats Inngest
Cloud's 429 (75 requests per 5 s per key) as final; and it drops the count of events a 400 says
were taken. `EventSender` posts to the SDK's URL with its headers (event key, env) on a
connection pool of its own, retries 5xx and 429 (after `Retry-After`) within the dispatch
timeout, and reports how many events a refusal says were taken.

The event key travels in the Event API's URL path (`/e/<key>`), which httpx logs at INFO
(C23): `mask_event_keys` puts a filter on the `httpx` logger that masks it.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time

import httpx
import inngest

logger = logging.getLogger("jobs_core.backends.inngest")

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
