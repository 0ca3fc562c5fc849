"""The Inngest producer: a dispatch is an Inngest event named after its job.

An event's `name` is the job's name, `data` the payload, `id` the dispatch id (C9) and `ts`
the start time (C8), sent to the Event API by `sender.EventSender`.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta, timezone
from typing import Any

import inngest
import pydantic_core
from inngest._internal import errors as sdk_errors

from jobs_core import hooks
from jobs_core.config import JobsSettings, load_settings
from jobs_core.dispatch.dispatcher import BaseDispatcher, PartialSend, PreparedEvent
from jobs_core.dispatch.prepared import PreparedJob, keyed_dispatch_id
from jobs_core.errors import DispatchError, JobConfigError, JobPayloadError
from jobs_core.events.event import EventReceipt
from jobs_core.instrumentation import JobEvent, safe_record
from jobs_core.jobs.job import Job
from jobs_core.worker import ContextSource

from .sender import EventApiError, EventSender, mask_event_keys

BACKEND = "inngest"
MAX_EVENTS_PER_REQUEST = 5_000
DEFAULT_MAX_REQUEST_BYTES = 512_000
"""Largest request `dispatch_many` builds: the Event API's (512 KB by default); one larger event
(within `max_payload_bytes`, checked at dispatch) is sent alone."""
MAX_NAME = 255
DEFAULT_MAX_DELAY = timedelta(days=7)
"""The longest `delay` Inngest's Free plan keeps (paid plans: a year); `INNGEST_MAX_DELAY`."""
LATEST_TS = datetime(2100, 1, 1, tzinfo=timezone.utc)
GAVE_UP = "jobs_core gave up"
GAVE_UP_AT = re.compile(re.escape(GAVE_UP) + r" on job .*? at attempt (\d+): (.*)", re.S)
"""A give-up's message, as the worker answers it: the attempt, and the error described."""
"""Starts the message of the core's own give-up, which the failure function then skips."""

mask_event_keys()


def create_inngest_client(settings: JobsSettings | None = None, **options: Any) -> inngest.Inngest:
    """An SDK client for `INNGEST_APP_NAME`; `options` override the SDK's `INNGEST_*` variables."""
    options.setdefault("app_id", (settings or load_settings()).inngest_app_name)
    try:
        return inngest.Inngest(**options)
    except sdk_errors.Error as exc:
        raise JobConfigError(f"cannot create the Inngest client: {exc}") from exc


def require_key(client: inngest.Inngest, attribute: str, variable: str, why: str) -> None:
    """In production mode, a `JobConfigError` naming `variable` when the client lacks it."""
    if client.is_production and not getattr(client, attribute, None):
        raise JobConfigError(
            f"{variable} is not set: Inngest in production mode {why} "
            "(set INNGEST_DEV=1 to use the Inngest Dev Server instead)"
        )


def check_job_name(job: Job[Any, Any]) -> None:
    """Refuse a name Inngest refuses: one its Event API rejects every dispatch of, and whose
    function makes the whole app fail to sync (its other jobs then never run)."""
    name = job.name
    if name.lower().startswith("inngest/"):
        problem = "starts with 'inngest/', which Inngest keeps for its own events"
    elif len(name) > MAX_NAME:
        problem = f"is {len(name)} characters long; Inngest takes at most {MAX_NAME}"
    else:
        return
    raise JobConfigError(f"job {name[:60]!r}: option 'name' {problem} ({BACKEND} backend)")


event_id_for = keyed_dispatch_id
"""The event `id` of a keyed dispatch: `<job>:<key>`, its dispatch id on every backend."""


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


DATA_KEY = "_jobs_core_trace"
"""Where what hooks (tracing) send with a job travels in its event: a key of the event's data
that no payload model can have (pydantic fields do not start with `_`), removed before the
payload is read."""


def _event(p: PreparedJob, data: bytes = b"") -> bytes:
    """The event's JSON with `data` (the payload's JSON, serialised once at dispatch) as is."""
    event: dict[str, Any] = {"name": p.name, "id": p.dispatch_id}
    if p.eta is not None and p.eta > datetime.now(timezone.utc):
        event["ts"] = _millis(p.eta)  # a start time that has passed is "now", as elsewhere
    if p.headers and data:
        data = with_headers(data, p.headers)
    return pydantic_core.to_json(event)[:-1] + b',"data":' + data + b"}"


def with_headers(data: bytes, headers: Mapping[str, str]) -> bytes:
    """An event's data (a JSON object) with `headers` under `DATA_KEY`."""
    carried = b'{"' + DATA_KEY.encode() + b'":' + pydantic_core.to_json(dict(headers))
    return carried + (b"}" if data.strip() == b"{}" else b"," + data.lstrip()[1:])


def _chunks(parts: Sequence[bytes], max_bytes: int) -> list[tuple[int, int]]:
    """Split serialised events into runs (start, end) whose request stays under `max_bytes`."""
    chunks: list[tuple[int, int]] = []
    start, size = 0, 2
    for i, part in enumerate(parts):
        if i > start and (size + len(part) > max_bytes or i - start >= MAX_EVENTS_PER_REQUEST):
            chunks.append((start, i))
            start, size = i, 2
        size += len(part) + 1
    chunks.append((start, len(parts)))
    return chunks


class InngestPort:
    """The escape hatch to Inngest itself: raw events, instrumented like dispatches.

    `send` / `send_sync` post one event with any name and data (for functions written with the
    SDK directly) and return its id; `.client` is the SDK client.
    """

    def __init__(self, dispatcher: InngestDispatcher) -> None:
        self._dispatcher = dispatcher

    @property
    def client(self) -> inngest.Inngest:
        return self._dispatcher.client

    def send_sync(
        self, name: str, data: Mapping[str, Any] | None = None, *, id: str = "", ts: Any = None
    ) -> str:
        """Send one raw event (`ts`: an aware datetime) and return its id (`id`, else a new
        uuid: what the functions see as `event.id`); a failure is a `DispatchError`."""
        d = self._dispatcher
        event_id = id or str(uuid.uuid4())
        event: dict[str, Any] = {"name": name, "data": dict(data or {}), "id": event_id}
        if ts:
            event["ts"] = _millis(ts)
        try:
            d.sender.send([pydantic_core.to_json(event)])
        except Exception as error:
            d._record_schedule_failure(name, id or None, error)
            raise DispatchError(name, error) from error
        safe_record(d.events, JobEvent("scheduled", "schedule", name, event_id, 0, BACKEND))
        return event_id

    async def send(
        self, name: str, data: Mapping[str, Any] | None = None, *, id: str = "", ts: Any = None
    ) -> str:
        """`send_sync` from async code (in a worker thread: one SDK client serves every loop)."""
        return await asyncio.to_thread(self.send_sync, name, data, id=id, ts=ts)


class InngestDispatcher(BaseDispatcher):
    """Sends jobs to Inngest as events through `client`'s Event API.

    Each event's `id` is its dispatch id, chosen here (Inngest answers with ids of its own).
    Inngest runs one event per id for 24 h without saying it dropped a repeat: a repeat's
    receipt has `deduplicated=False` and the same `dispatch_id`. What the Event API would
    refuse is refused before sending; a 429 is waited out within the timeout; a batch taken in
    part raises a `DispatchError` whose `.accepted` will run. `max_delay`: `INNGEST_MAX_DELAY`.
    """

    backend_name = BACKEND
    max_delay_reason = "INNGEST_MAX_DELAY: Inngest keeps events 7 days on its Free plan"

    def __init__(
        self,
        client: inngest.Inngest,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_delay: timedelta = DEFAULT_MAX_DELAY,
        **options: Any,
    ) -> None:
        require_key(client, "_event_key", "INNGEST_EVENT_KEY", "needs an event key to send")
        super().__init__(**options)
        self.client = client
        self.max_request_bytes = max_request_bytes
        self.max_delay = max_delay
        self.sender = EventSender(client, self.timeout)
        self.inngest = InngestPort(self)

    def _check(self, prepared: PreparedJob) -> None:
        check_job_name(prepared.job)
        if prepared.eta is not None and prepared.eta >= LATEST_TS:
            raise DispatchError(prepared.name, "Inngest refuses an event dated after 2100")
        size = len(_event(prepared)) + len(prepared.body)
        if self.max_payload_bytes and size > self.max_payload_bytes:
            msg = (
                f"the event is {size} bytes as JSON with its name and id; the limit is "
                f"{self.max_payload_bytes} (JOBS_MAX_PAYLOAD_BYTES: Inngest's event size)"
            )
            raise JobPayloadError(
                prepared.name, [{"type": "event_too_large", "loc": (), "msg": msg, "input": size}]
            )

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        parts = [_event(p, p.body) for p in jobs]
        for start, end in _chunks(parts, self.max_request_bytes):
            try:
                self.sender.send(parts[start:end])
            except EventApiError as error:
                if start + error.accepted:
                    taken = [p.dispatch_id for p in jobs[: start + error.accepted]]
                    raise PartialSend(taken, error) from error
                raise
        return [p.dispatch_id for p in jobs]

    def _submit_events(self, events: Sequence[PreparedEvent[PreparedJob]]) -> list[EventReceipt]:
        """One Inngest event per `send`, named as the event, with its id: the server runs every
        function it triggers (and runs none again for a repeated id within 24 h)."""
        parts = []
        traced = [hooks.Sending(e.event.name, e.event_id) for e in events]
        seam: Any = hooks.dispatching(BACKEND, traced) if hooks.HOOKS else nullcontext([])
        with seam as headers:
            for i, e in enumerate(events):
                event: dict[str, Any] = {"name": e.event.name, "id": e.event_id}
                if e.eta is not None and e.eta > datetime.now(timezone.utc):
                    event["ts"] = _millis(e.eta)
                body = with_headers(e.body, headers[i]) if headers and headers[i] else e.body
                parts.append(pydantic_core.to_json(event)[:-1] + b',"data":' + body + b"}")
            self._send_event_parts(events, parts)
        receipts = []
        for e in events:
            for job in e.event.jobs:
                self._receipt(job.name, e.event_id)  # `scheduled`, as a fan-out records it
            triggered = tuple(job.name for job in e.event.jobs)
            receipts.append(EventReceipt(e.event.name, e.event_id, triggered))
        return receipts

    def _send_event_parts(
        self, events: Sequence[PreparedEvent[PreparedJob]], parts: list[bytes]
    ) -> None:
        for start, end in _chunks(parts, self.max_request_bytes):
            try:
                self.sender.send(parts[start:end])
            except Exception as error:
                for e in events:
                    self._record_schedule_failure(e.event.name, e.event_id, error)
                names = ", ".join(sorted({e.event.name for e in events}))
                raise DispatchError(names, error) from error

    async def _submit_events_async(
        self, events: Sequence[PreparedEvent[PreparedJob]]
    ) -> list[EventReceipt]:
        return await asyncio.to_thread(self._submit_events, events)

    def close(self) -> None:
        self.sender.close()
        super().close()

    def __repr__(self) -> str:
        origin = getattr(self.client, "_event_api_origin", "?")
        mode = "production" if self.client.is_production else "dev"
        return f"InngestDispatcher(app_id={self.client.app_id!r}, event_api={origin!r}, {mode=})"


def create_dispatcher(
    settings: JobsSettings,
    *,
    context: ContextSource = None,
    client: inngest.Inngest | None = None,
    **options: Any,
) -> InngestDispatcher:
    """The `JOBS_BACKEND=inngest` factory used by `jobs_core.create_dispatcher`."""
    client = client or create_inngest_client(settings)
    options.setdefault("max_delay", settings.inngest_max_delay)
    return InngestDispatcher(client, **settings.dispatcher_options(**options))
