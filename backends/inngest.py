"""The Inngest backend: a dispatch is an Inngest event, and each job an Inngest function.

An event's `name` is the job's name, its `data` the payload, its `ts` the start time (C8) and,
for a keyed dispatch, its `id` `<job>:<key>` (C9). A job's function (id and trigger = the job's
name, `retries` = `retry.attempts`) runs it through the core's worker: a retry is the SDK's
`RetryAfterError` with the core's wait, a give-up its `NonRetriableError`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pydantic_core

from jobs_core.config import JobsSettings, load_settings, missing_extra
from jobs_core.dispatcher import BaseDispatcher, PreparedJob, keyed_dispatch_id
from jobs_core.errors import DispatchError, JobConfigError
from jobs_core.execution import ContextSource
from jobs_core.instrumentation import Instrumentation, JobEvent, describe_error, safe_record
from jobs_core.job import Job
from jobs_core.payload import DEFAULT_MAX_PAYLOAD_BYTES
from jobs_core.registry import JobRegistry
from jobs_core.worker import Delivery, JobWorker

try:
    import fastapi
    import inngest
    import inngest.fast_api
    from inngest._internal import errors as sdk_errors

    from ._inngest_patches import (
        MAX_SIGNATURE_AGE,
        EventSender,
        RejectStaleSignatures,
        logger,
        mask_event_keys,
    )
except ImportError as _exc:  # pragma: no cover - exercised by C24 with the module hidden
    raise missing_extra("inngest", "inngest", getattr(_exc, "name", None) or str(_exc)) from _exc

from ._inngest_flow import flow_options
from ._inngest_schedules import create_inngest_schedule_functions

BACKEND = "inngest"
DEFAULT_SERVE_PATH = "/api/inngest"
MAX_EVENTS_PER_REQUEST = 5_000
DEFAULT_MAX_REQUEST_BYTES = DEFAULT_MAX_PAYLOAD_BYTES
"""Largest request body `dispatch_many` builds (Inngest's smallest plan limit); an event
larger than this on its own is still sent, alone."""

_EVENT_ENVELOPE_BYTES = 160  # an event's name, id, ts and separators, beside its payload

mask_event_keys()


def create_inngest_client(settings: JobsSettings | None = None, **options: Any) -> inngest.Inngest:
    """An SDK client for `INNGEST_APP_NAME`; the SDK reads its own `INNGEST_*` variables, and
    `options` (e.g. `is_production=False`) go to `inngest.Inngest`, overriding them."""
    options.setdefault("app_id", (settings or load_settings()).inngest_app_name)
    try:
        return inngest.Inngest(**options)
    except sdk_errors.Error as exc:
        raise JobConfigError(f"cannot create the Inngest client: {exc}") from exc


def _require_key(client: inngest.Inngest, attribute: str, variable: str, why: str) -> None:
    if client.is_production and not getattr(client, attribute, None):
        raise JobConfigError(
            f"{variable} is not set: Inngest in production mode {why} "
            "(set INNGEST_DEV=1 to use the Inngest Dev Server instead)"
        )


# -- producer -----------------------------------------------------------------------------


event_id_for = keyed_dispatch_id
"""The event `id` of a keyed dispatch: `<job>:<key>`, its dispatch id on every backend."""


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _event(prepared: PreparedJob) -> inngest.Event:
    return inngest.Event(
        name=prepared.name,
        data=prepared.data,
        id=prepared.dispatch_id if prepared.idempotency_key else "",
        ts=_millis(prepared.eta) if prepared.eta is not None else 0,
    )


def _chunks(jobs: Sequence[PreparedJob], max_bytes: int) -> list[Sequence[PreparedJob]]:
    """Split `jobs` into runs whose estimated request size stays under `max_bytes`."""
    chunks: list[Sequence[PreparedJob]] = []
    start, size = 0, 2
    for i, prepared in enumerate(jobs):
        item = len(pydantic_core.to_json(prepared.data)) + _EVENT_ENVELOPE_BYTES
        if i > start and (size + item > max_bytes or i - start >= MAX_EVENTS_PER_REQUEST):
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
        self, name: str, data: Mapping[str, Any] | None = None, *, id: str = "", ts: Any = None
    ) -> str:
        """Send one raw event (`ts`: an aware datetime); a failure is a `DispatchError`."""
        d = self._dispatcher
        event = inngest.Event(name=name, data=dict(data or {}), id=id, ts=_millis(ts) if ts else 0)
        try:
            [event_id] = d.sender.send([event])
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

    Idempotency is Inngest's own: a keyed dispatch's event id is `<job>:<key>` and Inngest runs
    one event per id for 24 h. Its answer does not say whether it dropped a repeat, so a
    repeat's receipt has `deduplicated=False`, with the same `dispatch_id` as the first.
    """

    backend_name = BACKEND

    def __init__(
        self,
        client: inngest.Inngest,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        **options: Any,
    ) -> None:
        _require_key(client, "_event_key", "INNGEST_EVENT_KEY", "needs an event key to send")
        super().__init__(**options)
        self.client = client
        self.max_request_bytes = max_request_bytes
        self.sender = EventSender(client, self.timeout)
        self.inngest = InngestPort(self)

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        chunks = [jobs] if len(jobs) == 1 else _chunks(jobs, self.max_request_bytes)
        return [i for chunk in chunks for i in self.sender.send([_event(p) for p in chunk])]

    def close(self) -> None:
        self.sender.close()
        super().close()

    def __repr__(self) -> str:
        origin = getattr(self.client, "_event_api_origin", "?")
        mode = "production" if self.client.is_production else "dev"
        return (
            f"InngestDispatcher(app_id={self.client.app_id!r}, event_api={origin!r}, mode={mode})"
        )


def create_dispatcher(
    settings: JobsSettings,
    *,
    context: ContextSource = None,
    client: inngest.Inngest | None = None,
    **options: Any,
) -> InngestDispatcher:
    """The `JOBS_BACKEND=inngest` factory used by `jobs_core.create_dispatcher`."""
    client = client or create_inngest_client(settings)
    return InngestDispatcher(client, **settings.dispatcher_options(**options))


# -- worker -------------------------------------------------------------------------------


class _Settlement:
    """The core's decisions as the SDK's errors, which the Inngest executor acts on."""

    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        raise inngest.RetryAfterError(
            f"job {delivery.job_name!r} will retry",
            retry_after=datetime.now(timezone.utc) + delay,
            quiet=True,
        )

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        reason = describe_error(error)
        raise inngest.NonRetriableError(f"job {delivery.job_name!r} gave up: {reason}", quiet=True)


SETTLEMENT = _Settlement()


def _delivery(job: Job[Any, Any], ctx: inngest.Context | inngest.ContextSync) -> Delivery:
    event_id = getattr(ctx.event, "id", None)
    return Delivery(job.name, ctx.event.data, ctx.attempt, str(event_id) if event_id else None)


def create_inngest_job_function(
    client: inngest.Inngest,
    job: Job[Any, Any],
    context: ContextSource,
    instrumentation: Instrumentation | None = None,
    worker: JobWorker[Any] | None = None,
) -> inngest.Function[Any]:
    """The Inngest function that runs `job`: id and trigger event = the job's name. Async when
    a part of a run is async (it runs on the server's loop); sync otherwise, in the SDK's thread
    pool with no event loop (what Django's ORM needs)."""
    worker = worker or JobWorker(
        None, context=context, backend=BACKEND, instrumentation=instrumentation
    )
    register = client.create_function(
        fn_id=job.name,
        name=job.name,
        retries=job.retry.attempts,
        trigger=inngest.TriggerEvent(event=job.name),
        **flow_options(job),  # C25, C26; a period Inngest cannot take is refused (C28)
    )
    if worker.needs_event_loop(job):

        async def run_async(ctx: inngest.Context) -> None:
            await worker.run_async(_delivery(job, ctx), SETTLEMENT, job)

        return register(run_async)

    def run_sync(ctx: inngest.ContextSync) -> None:
        worker.run(_delivery(job, ctx), SETTLEMENT, job)

    return register(run_sync)


def create_inngest_functions(
    client: inngest.Inngest,
    registry: JobRegistry[Any],
    context: ContextSource,
    instrumentation: Instrumentation | None = None,
) -> list[inngest.Function[Any]]:
    """One Inngest function per job of `registry` (see `create_inngest_job_function`), and one
    cron function per schedule (see `create_inngest_schedule_functions`)."""
    worker = JobWorker(registry, context=context, backend=BACKEND, instrumentation=instrumentation)
    jobs = [create_inngest_job_function(client, job, context, worker=worker) for job in registry]
    return jobs + create_inngest_schedule_functions(client, registry, instrumentation)


# -- serving ------------------------------------------------------------------------------


def serve(
    app: fastapi.FastAPI,
    client: inngest.Inngest,
    functions: list[inngest.Function[Any]],
    *,
    serve_path: str | None = None,
    max_signature_age: timedelta = MAX_SIGNATURE_AGE,
) -> None:
    """`inngest.fast_api.serve`, plus the replay check in production mode (C22); there, a
    missing signing key is a `JobConfigError` naming `INNGEST_SIGNING_KEY`."""
    why = "signs every call to the served functions, and they cannot be checked without it"
    _require_key(client, "_signing_key", "INNGEST_SIGNING_KEY", why)
    path = serve_path or DEFAULT_SERVE_PATH
    try:
        inngest.fast_api.serve(app, client, functions, serve_path=path)
    except sdk_errors.Error as exc:
        raise JobConfigError(f"cannot serve the Inngest functions: {exc}") from exc
    if client.is_production:
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
    functions = create_inngest_functions(client, registry, context, instrumentation)
    serve(app, client, functions, serve_path=serve_path)
    return app


def run_worker(
    registry: JobRegistry[Any],
    *,
    context: ContextSource,
    settings: JobsSettings | None = None,
    argv: Sequence[str] = (),
    instrumentation: Instrumentation | None = None,
    **_: Any,
) -> int:
    """Serve `registry` with uvicorn until interrupted (`python -m jobs_core worker`)."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m jobs_core worker APP:REGISTRY --")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument("--path", default=DEFAULT_SERVE_PATH, help="serve path (/api/inngest)")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    args = parser.parse_args(list(argv))
    app = create_inngest_app(
        registry,
        context=context,
        instrumentation=instrumentation,
        settings=settings,
        serve_path=args.path,
    )
    logger.info(
        "serving %d job(s) at http://%s:%d%s", len(registry), args.host, args.port, args.path
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
