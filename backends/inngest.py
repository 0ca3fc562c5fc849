"""The Inngest backend: jobs become Inngest events, and each job is an Inngest function.

Producer (`InngestDispatcher`, made by `create_dispatcher`): each dispatch is one event whose
`name` is the job's name and whose `data` is the validated JSON payload; `delay` / `run_at`
become the event's `ts` (Unix ms, C8) and an idempotency key becomes the event `id`, scoped by
job name, which Inngest deduplicates for 24 h (C9). `dispatch_many` posts one request per chunk
that stays under the Event API's size and count limits. The request is the SDK's own
(`Inngest._build_send_request`: URL, event key, headers, id seed), sent on a connection pool of
ours so that the whole send, retries included, ends within `JOBS_DISPATCH_TIMEOUT`: the SDK's
`send_sync` retries for ~3.4 s and then waits up to 30 s per request (C7).

Worker (`create_inngest_job_function`, `create_inngest_functions`, `serve`,
`create_inngest_app`, `run_worker`): one Inngest function per job, id and trigger event = job
name, `retries = job.retry.attempts`. Its body is one call of the core's runner, whose outcome
is mapped onto the SDK's own errors:

- retry: `RetryAfterError` at the core's backoff (C15) or the handler's `RetryLater` (C14);
- give up (retries spent, `PermanentError`, bad payload C16): the core already ran `on_failure`
  once and recorded `failed`; the function raises `NonRetriableError`, so Inngest stops.

The SDK's own `on_failure` function is not used: the core decides when a job gave up, and calls
the job's hook exactly once, as on every other backend.

Production mode (`INNGEST_DEV` unset or 0): a missing `INNGEST_EVENT_KEY` is a `JobConfigError`
when the dispatcher is made, a missing `INNGEST_SIGNING_KEY` one when functions are served. The
SDK checks each call's signature but not its age; `serve` adds a check that refuses signatures
older than 5 minutes (replays) with 401 (C22). The event key travels in the Event API's URL
path; a filter on the `httpx` logger masks it (C23).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from jobs_core.config import JobsSettings, load_settings, missing_extra
from jobs_core.dispatcher import BaseDispatcher, PreparedJob
from jobs_core.errors import DispatchError, JobConfigError
from jobs_core.execution import (
    ContextSource,
    JobOutcome,
    needs_event_loop,
    run_job,
    run_job_sync,
)
from jobs_core.idempotency import MemoryIdempotencyStore
from jobs_core.instrumentation import (
    Instrumentation,
    JobEvent,
    describe_error,
    safe_record,
    with_logging,
)
from jobs_core.job import Job, JobRegistry
from jobs_core.retry import MAX_ATTEMPTS

try:
    import fastapi
    import httpx
    import inngest
    import inngest.fast_api
    from inngest._internal import errors as sdk_errors
except ImportError as _exc:  # pragma: no cover - exercised by C24 with the module hidden
    raise missing_extra("inngest", "inngest", getattr(_exc, "name", None) or str(_exc)) from _exc

from ._inngest_schedules import create_inngest_schedule_functions

BACKEND = "inngest"
DEFAULT_SERVE_PATH = "/api/inngest"

MAX_EVENTS_PER_REQUEST = 5_000
"""Inngest's limit of events in one Event API request."""

DEFAULT_MAX_REQUEST_BYTES = 256 * 1024
"""Largest Event API request body `dispatch_many` builds (Inngest's smallest plan limit). An
event larger than this on its own is still sent, alone; the payload limit keeps it near."""

MAX_SIGNATURE_AGE = timedelta(minutes=5)
"""A signed call older than this is refused as a replay (C22)."""

_EVENT_OVERHEAD_BYTES = 160
"""Room for an event's envelope (name, id, ts, separators) beside its payload, when chunking."""

_SIGNATURE_HEADER = "x-inngest-signature"

logger = logging.getLogger("jobs_core.backends.inngest")


# -- secrets in logs ----------------------------------------------------------------------

_EVENT_KEY_IN_PATH = re.compile(r"/e/[^/\s\"'?#]+")


def redact_event_key(text: str) -> str:
    """`text` with the event key of any Event API URL (`/e/<key>`) replaced by `***` (C23)."""
    return _EVENT_KEY_IN_PATH.sub("/e/***", text)


class _EventKeyFilter(logging.Filter):
    """Masks the event key in httpx's request log lines (`HTTP Request: POST .../e/<key>`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/e/" in message:
            record.msg, record.args = redact_event_key(message), ()
        return True


def _install_log_filter() -> None:
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, _EventKeyFilter) for f in httpx_logger.filters):
        httpx_logger.addFilter(_EventKeyFilter())


_install_log_filter()


# -- client -------------------------------------------------------------------------------


def create_inngest_client(settings: JobsSettings | None = None, **options: Any) -> inngest.Inngest:
    """An SDK client for `INNGEST_APP_NAME`; the SDK reads its own `INNGEST_*` variables.

    `options` go to `inngest.Inngest` (for example `is_production=False` or
    `event_api_base_url=...`), overriding the environment.
    """
    settings = settings or load_settings()
    options.setdefault("app_id", settings.inngest_app_name)
    try:
        return inngest.Inngest(**options)
    except sdk_errors.Error as exc:
        raise JobConfigError(f"cannot create the Inngest client: {exc}") from exc


def is_production(client: inngest.Inngest) -> bool:
    """True when `client` talks to Inngest Cloud (signed calls, event key required)."""
    return bool(client.is_production)


def _require_event_key(client: inngest.Inngest) -> None:
    if is_production(client) and not getattr(client, "_event_key", None):
        raise JobConfigError(
            "INNGEST_EVENT_KEY is not set: Inngest in production mode needs an event key to "
            "send events (set INNGEST_DEV=1 to use the Inngest Dev Server instead)"
        )


def _require_signing_key(client: inngest.Inngest) -> None:
    if is_production(client) and not getattr(client, "_signing_key", None):
        raise JobConfigError(
            "INNGEST_SIGNING_KEY is not set: Inngest in production mode signs every call to "
            "the served functions, and they cannot be checked without it "
            "(set INNGEST_DEV=1 to use the Inngest Dev Server instead)"
        )


# -- producer -----------------------------------------------------------------------------


class EventApiError(Exception):
    """The Event API refused the events, answered something unreadable, or did not answer."""


class EventSender:
    """Posts events to the Inngest Event API with the SDK's request, within a deadline.

    A refused connection or a 5xx answer is tried again (same request, so the same id seed:
    Inngest does not store the events twice) while the deadline allows; a 4xx answer, or an
    answer that carries an `error`, fails at once.
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
                failure: str = f"{type(exc).__name__}: {redact_event_key(str(exc)) or 'no answer'}"
            else:
                if response.status_code < 500:
                    return self._ids(response, len(events))
                failure = f"the Event API answered {response.status_code}"
            remaining = deadline - time.monotonic()
            if remaining <= pause:
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


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def event_id_for(job_name: str, idempotency_key: str) -> str:
    """The event `id` for an idempotency key, scoped by job name like on every backend."""
    return f"{job_name}:{idempotency_key}"


def _event(prepared: PreparedJob) -> inngest.Event:
    return inngest.Event(
        name=prepared.name,
        data=prepared.data,
        id=prepared.dispatch_id if prepared.idempotency_key else "",
        ts=_millis(prepared.eta) if prepared.eta is not None else 0,
    )


def _chunks(
    jobs: Sequence[PreparedJob], max_bytes: int, max_count: int = MAX_EVENTS_PER_REQUEST
) -> list[Sequence[PreparedJob]]:
    """Split `jobs` into runs whose estimated request size stays under `max_bytes`."""
    if len(jobs) == 1:
        return [jobs]
    chunks: list[Sequence[PreparedJob]] = []
    start, size = 0, 2
    for i, prepared in enumerate(jobs):
        item = len(json.dumps(prepared.data, separators=(",", ":"))) + _EVENT_OVERHEAD_BYTES
        if i > start and (size + item > max_bytes or i - start >= max_count):
            chunks.append(jobs[start:i])
            start, size = i, 2
        size += item
    chunks.append(jobs[start:])
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
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        ts: datetime | None = None,
    ) -> str:
        """Send one raw event; a failure is a `DispatchError` (recorded as `failed`)."""
        dispatcher = self._dispatcher
        event = inngest.Event(
            name=name,
            data=dict(data or {}),
            id=id or "",
            ts=_millis(ts) if ts is not None else 0,
        )
        try:
            [event_id] = dispatcher.sender.send([event])
        except Exception as error:
            dispatcher._record_schedule_failure(name, id, error)
            raise DispatchError(name, error) from error
        safe_record(
            dispatcher.instrumentation,
            JobEvent("scheduled", "schedule", name, event_id, 0, BACKEND),
        )
        return event_id

    async def send(
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        ts: datetime | None = None,
    ) -> str:
        """`send_sync` from async code (in a worker thread: one SDK client serves every loop)."""
        return await asyncio.to_thread(self.send_sync, name, data, id=id, ts=ts)


class InngestDispatcher(BaseDispatcher):
    """Sends jobs to Inngest as events through `client`'s Event API.

    Idempotency keys become event ids, which Inngest deduplicates for 24 h; this process also
    remembers the keys it sent, so a repeat from the same process is not sent at all and its
    receipt says `deduplicated=True`. A repeat from another process is dropped by Inngest,
    whose answer does not say so: that receipt says `deduplicated=False`.
    """

    backend_name = BACKEND

    def __init__(
        self,
        client: inngest.Inngest,
        *,
        instrumentation: Instrumentation | None = None,
        timeout: float = 5.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        **options: Any,
    ) -> None:
        _require_event_key(client)
        super().__init__(
            instrumentation=instrumentation,
            idempotency=MemoryIdempotencyStore(),
            timeout=timeout,
            **options,
        )
        self.client = client
        self.max_request_bytes = max_request_bytes
        self.sender = EventSender(client, timeout)
        self.inngest = InngestPort(self)

    def prepare(
        self,
        job: Job[Any, Any],
        payload: Any,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> PreparedJob:
        """As on every backend; a keyed dispatch's id is its event id, so a duplicate's
        receipt names the event that Inngest keeps."""
        prepared = super().prepare(job, payload, delay, run_at, idempotency_key)
        if idempotency_key:
            return dataclasses.replace(
                prepared, dispatch_id=event_id_for(job.name, idempotency_key)
            )
        return prepared

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        ids: list[str] = []
        for chunk in _chunks(jobs, self.max_request_bytes):
            ids.extend(self.sender.send([_event(p) for p in chunk]))
        return ids

    def close(self) -> None:
        """Close the HTTP connections (the dispatcher can not be used afterwards)."""
        self.sender.close()

    def __repr__(self) -> str:
        origin = getattr(self.client, "_event_api_origin", "?")
        mode = "production" if is_production(self.client) else "dev"
        return (
            f"InngestDispatcher(app_id={self.client.app_id!r}, event_api={origin!r}, mode={mode})"
        )


def create_dispatcher(
    settings: JobsSettings,
    *,
    context: ContextSource = None,
    instrumentation: Instrumentation | None = None,
    client: inngest.Inngest | None = None,
    **options: Any,
) -> InngestDispatcher:
    """The `JOBS_BACKEND=inngest` factory used by `jobs_core.create_dispatcher`.

    `context` is not used: the producer runs no handler code.
    """
    return InngestDispatcher(
        client or create_inngest_client(settings),
        instrumentation=instrumentation,
        timeout=settings.dispatch_timeout,
        max_payload_bytes=settings.max_payload_bytes,
        **options,
    )


# -- worker -------------------------------------------------------------------------------


def _check_retries(job: Job[Any, Any]) -> None:
    attempts = job.retry.attempts
    if not isinstance(attempts, int) or not 0 <= attempts <= MAX_ATTEMPTS:
        raise JobConfigError(
            f"job {job.name!r}: retry.attempts must be 0..{MAX_ATTEMPTS} for Inngest, "
            f"got {attempts!r}"
        )


def _raise_for(job: Job[Any, Any], outcome: JobOutcome) -> None:
    """Map a finished run onto the SDK: return on success, else the error Inngest acts on."""
    if outcome.completed:
        return
    reason = describe_error(outcome.error) if outcome.error is not None else "no error"
    if outcome.should_retry:
        wait = outcome.retry_in or timedelta(0)
        raise inngest.RetryAfterError(
            f"job {job.name!r} will retry: {reason}",
            retry_after=datetime.now(timezone.utc) + wait,
            quiet=True,
        )
    raise inngest.NonRetriableError(f"job {job.name!r} gave up: {reason}", quiet=True)


def _dispatch_id(event: Any) -> str | None:
    event_id = getattr(event, "id", None)
    return str(event_id) if event_id else None


def create_inngest_job_function(
    client: inngest.Inngest,
    job: Job[Any, Any],
    context: ContextSource,
    instrumentation: Instrumentation | None = None,
) -> inngest.Function[Any]:
    """The Inngest function that runs `job`: id and trigger event = the job's name.

    Async when any part of a run is async (handler, context factory, failure hook), so it runs
    on the server's event loop; sync otherwise, so the SDK runs it in its thread pool with no
    event loop (what Django's ORM needs).
    """
    _check_retries(job)
    instrumentation = with_logging(instrumentation)
    register = client.create_function(
        fn_id=job.name,
        name=job.name,
        retries=job.retry.attempts,
        trigger=inngest.TriggerEvent(event=job.name),
    )

    if needs_event_loop(job, context):

        async def run_async(ctx: inngest.Context) -> None:
            outcome = await run_job(
                job,
                ctx.event.data,
                context=context,
                attempt=ctx.attempt,
                dispatch_id=_dispatch_id(ctx.event),
                backend=BACKEND,
                instrumentation=instrumentation,
            )
            _raise_for(job, outcome)

        return register(run_async)

    def run_sync(ctx: inngest.ContextSync) -> None:
        outcome = run_job_sync(
            job,
            ctx.event.data,
            context=context,
            attempt=ctx.attempt,
            dispatch_id=_dispatch_id(ctx.event),
            backend=BACKEND,
            instrumentation=instrumentation,
        )
        _raise_for(job, outcome)

    return register(run_sync)


def create_inngest_functions(
    client: inngest.Inngest,
    registry: JobRegistry[Any],
    context: ContextSource,
    instrumentation: Instrumentation | None = None,
) -> list[inngest.Function[Any]]:
    """One Inngest function per job of `registry` (see `create_inngest_job_function`), and one
    cron function per schedule (see `create_inngest_schedule_functions`)."""
    return [
        create_inngest_job_function(client, job, context, instrumentation) for job in registry
    ] + create_inngest_schedule_functions(client, registry, instrumentation)


# -- serving ------------------------------------------------------------------------------

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
    if signed_at is None:
        return None
    return (time.time() if now is None else now) - signed_at


class RejectStaleSignatures:
    """ASGI middleware: 401 for a signed call to `path` whose signature is older than
    `max_age` (or dated in the future by as much): a replayed request (C22).

    The SDK checks the signature itself but not its age; this runs before it. Calls without a
    signature pass through, and the SDK refuses them in production mode.
    """

    def __init__(
        self, app: ASGIApp, path: str = DEFAULT_SERVE_PATH, max_age: timedelta = MAX_SIGNATURE_AGE
    ) -> None:
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
                    if k.decode("latin-1").lower() == _SIGNATURE_HEADER
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
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


def serve(
    app: fastapi.FastAPI,
    client: inngest.Inngest,
    functions: list[inngest.Function[Any]],
    *,
    serve_path: str | None = None,
    max_signature_age: timedelta = MAX_SIGNATURE_AGE,
) -> None:
    """`inngest.fast_api.serve`, plus the replay check in production mode (C22).

    A missing signing key in production mode is a `JobConfigError` naming
    `INNGEST_SIGNING_KEY`.
    """
    _require_signing_key(client)
    path = serve_path or DEFAULT_SERVE_PATH
    try:
        inngest.fast_api.serve(app, client, functions, serve_path=path)
    except sdk_errors.Error as exc:
        raise JobConfigError(f"cannot serve the Inngest functions: {exc}") from exc
    if is_production(client):
        app.add_middleware(RejectStaleSignatures, path=path, max_age=max_signature_age)


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
    client = client or create_inngest_client(settings)
    app = fastapi.FastAPI(title=f"{client.app_id} jobs")
    serve(
        app,
        client,
        create_inngest_functions(client, registry, context, instrumentation),
        serve_path=serve_path,
    )
    return app


def _worker_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs_core worker APP:REGISTRY --",
        description="Serve the jobs as Inngest functions over HTTP (uvicorn + FastAPI).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument("--path", default=DEFAULT_SERVE_PATH, help="serve path (/api/inngest)")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    return parser.parse_args(list(argv))


def run_worker(
    registry: JobRegistry[Any],
    *,
    context: ContextSource,
    settings: JobsSettings | None = None,
    argv: Sequence[str] = (),
    instrumentation: Instrumentation | None = None,
) -> int:
    """Serve `registry` with uvicorn until interrupted (`python -m jobs_core worker`)."""
    import uvicorn

    args = _worker_arguments(argv)
    app = create_inngest_app(
        registry,
        context=context,
        instrumentation=instrumentation,
        serve_path=args.path,
        settings=settings,
    )
    logger.info(
        "serving %d job(s) at http://%s:%d%s", len(registry), args.host, args.port, args.path
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


__all__ = [
    "DEFAULT_SERVE_PATH",
    "MAX_SIGNATURE_AGE",
    "EventSender",
    "InngestDispatcher",
    "InngestPort",
    "RejectStaleSignatures",
    "create_dispatcher",
    "create_inngest_app",
    "create_inngest_client",
    "create_inngest_functions",
    "create_inngest_job_function",
    "create_inngest_schedule_functions",
    "event_id_for",
    "redact_event_key",
    "run_worker",
    "serve",
]
