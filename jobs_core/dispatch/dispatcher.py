"""`BaseDispatcher`: everything a dispatcher does before and after its backend's enqueue call.

Validation (C4–C6), the payload size limit, delays (C8), idempotency keys (C9, C27), receipts, the
`scheduled` / `failed` instrumentation events and the mapping of any backend failure to
`DispatchError` (C7) live here once; an adapter only implements `_send`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import operator
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from typing_extensions import Unpack

from ..errors import (
    DispatchArgumentError,
    DispatchError,
    JobConfigError,
    JobPayloadError,
    JobsError,
)
from ..events.event import JOB_FAILED, Event, EventReceipt, M
from ..hooks import HOOKS, Sending, dispatching
from ..instrumentation import (
    DEFAULT_LOGGING,
    Instrumentation,
    JobEvent,
    describe_error,
    interest,
    safe_record,
    with_logging,
)
from ..jobs.job import Job, JobRequest, P
from ..jobs.payload import DEFAULT_MAX_PAYLOAD_BYTES, encode_payload, validate_payload
from .idempotency import (
    Claim,
    IdempotencyStore,
    RedisIdempotencyStore,
    payload_key,
    scoped_key,
)
from .port import (
    BatchOptions,
    DispatchItem,
    DispatchOptions,
    DispatchReceipt,
    EventItem,
    SendOptions,
)
from .prepared import PreparedJob, keyed_dispatch_id

DEFAULT_DISPATCH_TIMEOUT = 5.0

ErrorCallback = Callable[[BaseException, Job[Any, Any]], None]
"""`on_error(error, job)`: what a backend that runs jobs inside `dispatch` calls on a give-up."""

logger = logging.getLogger("jobs_core.dispatch")

_KEY_OF = operator.attrgetter("idempotency_key")


class PartialSend(Exception):
    """Raised by `_send` when the backend took only the first `len(ids)` jobs and refused the
    rest: those it took will run (they get receipts), the others failed with `cause`."""

    def __init__(self, ids: list[str], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.ids = ids
        self.cause = cause


def _keyed(prepared: Sequence[PreparedJob]) -> tuple[list[int], list[Claim], dict[int, int]]:
    """The keyed jobs of a batch: the index and claim of each key's first job, and the later
    jobs of a key already in the batch (index -> its first job's index), which are its
    duplicates whatever the store says."""
    first_of: dict[str, int] = {}
    firsts: list[int] = []
    claims: list[Claim] = []
    repeats: dict[int, int] = {}
    for i, p in enumerate(prepared):
        if not p.idempotency_key:
            continue
        claim = Claim(scoped_key(p.name, p.idempotency_key), p.dispatch_id)
        if claim.key in first_of:
            repeats[i] = first_of[claim.key]
            continue
        first_of[claim.key] = i
        firsts.append(i)
        claims.append(claim)
    return firsts, claims, repeats


def _duplicates(
    prepared: Sequence[PreparedJob],
    firsts: list[int],
    held: Sequence[str | None],
    repeats: dict[int, int],
) -> dict[int, str]:
    """index -> the dispatch id that holds its key, for each job that is not sent."""
    duplicates = {i: h for i, h in zip(firsts, held) if h is not None}
    for i, first in repeats.items():
        duplicates[i] = duplicates.get(first, prepared[first].dispatch_id)
    return duplicates


def resolve_eta(delay: timedelta | None, run_at: datetime | None) -> datetime | None:
    """The aware UTC time a job may start, from `delay` or `run_at` (not both)."""
    if delay is not None and run_at is not None:
        raise DispatchArgumentError("pass either delay= or run_at=, not both")
    if delay is not None:
        if not isinstance(delay, timedelta):
            raise DispatchArgumentError(f"delay= must be a timedelta, got {type(delay).__name__}")
        if delay < timedelta(0):
            raise DispatchArgumentError(f"delay= must not be negative, got {delay}")
        return datetime.now(timezone.utc) + delay if delay else None
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise DispatchArgumentError(f"run_at= must be a datetime, got {type(run_at).__name__}")
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise DispatchArgumentError(
                "run_at= must be timezone-aware (e.g. datetime.now(timezone.utc))"
            )
        return run_at.astimezone(timezone.utc)
    return None


Request = tuple[Any, Any, DispatchOptions]
"""One dispatch's arguments: (job, payload, options)."""


def requests_of(
    items: Iterable[DispatchItem], delay: timedelta | None, run_at: datetime | None
) -> Iterator[Request]:
    """The `dispatch_many` items as one dispatch's arguments each, the call's `delay`/`run_at`
    applying where an item sets none."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise DispatchArgumentError(
            f"dispatch_many expects an iterable of items, got a {type(items).__name__}"
        )
    for item in items:
        if isinstance(item, JobRequest):
            options = DispatchOptions(
                delay=item.delay if item.delay is not None else delay,
                run_at=item.run_at if item.run_at is not None else run_at,
                idempotency_key=item.idempotency_key,
            )
            if item.headers:
                options["headers"] = item.headers
            yield item.job, item.payload, options
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            yield item[0], item[1], DispatchOptions(delay=delay, run_at=run_at)
        else:
            raise DispatchArgumentError(
                "dispatch_many expects (job, payload) pairs or job.request(...) items, "
                f"got a {type(item).__name__}"
            )


def prepare_dispatch(
    job: Job[Any, Any],
    payload: Any,
    max_payload_bytes: int,
    delay: timedelta | None = None,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> PreparedJob:
    """One dispatch validated and serialised as every dispatcher does it (C4-C6, C10, C27):
    the payload fits the model and can travel, the options are sound, and a job with payload
    idempotency gets its key unless the call gave one. Raises a `JobsError`, records nothing."""
    if not isinstance(job, Job):
        raise DispatchArgumentError(
            f"dispatch expects a Job (from JobRegistry.job), got a {type(job).__name__}"
        )
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not idempotency_key
    ):
        raise DispatchArgumentError("idempotency_key= must be a non-empty str")
    model = validate_payload(job, payload)
    body = encode_payload(job, model, max_payload_bytes, fresh=model is not payload)
    eta = resolve_eta(delay, run_at)
    if idempotency_key is None and job.idempotency is not None:  # C27: an explicit key wins
        idempotency_key = payload_key(job.name, job.idempotency, lambda: model, body)
    if idempotency_key:
        dispatch_id = keyed_dispatch_id(job.name, idempotency_key)
    else:
        dispatch_id = secrets.token_hex(16)
    return PreparedJob(job, model, body, dispatch_id, eta, idempotency_key, headers)


Prepared = TypeVar("Prepared")


@dataclass(frozen=True)
class PreparedEvent(Generic[Prepared]):
    """A validated `send`: the event, its data (`model`, and as JSON in `body`), its id, whether
    the id was given (`keyed`: a repeat within 24 h runs no job again), when its jobs may start,
    and the triggered jobs, each prepared as a dispatch."""

    event: Event[Any]
    model: BaseModel
    body: bytes
    event_id: str
    keyed: bool
    eta: datetime | None
    jobs: list[Prepared]


def prepare_event(
    event: Event[Any], data: Any, max_payload_bytes: int, id: str | None
) -> tuple[BaseModel, bytes, str]:
    """An event's data validated and serialised (C4, C10), and its id (`id`, else a new one)."""
    if not isinstance(event, Event):
        raise DispatchArgumentError(
            f"send expects an Event (from JobRegistry.event), got a {type(event).__name__}"
        )
    if event is JOB_FAILED:
        raise DispatchArgumentError("JOB_FAILED is sent by jobs_core when a job gives up")
    if id is not None and (not isinstance(id, str) or not id):
        raise DispatchArgumentError("id= must be a non-empty str")
    model = event.validate(data)
    shape: Any = _EventShape(event.name, event.model)  # what encoding reads of a job
    body = encode_payload(shape, model, max_payload_bytes)
    return model, body, id or secrets.token_hex(16)


@dataclass(frozen=True)
class _EventShape:
    name: str
    payload_model: type[BaseModel]


class PortMethods(ABC, Generic[Prepared]):
    """`JobDispatcherPort`'s four methods, written once over what a dispatcher does: validate
    one job (`prepare`) and hand validated jobs on (`_submit`, `_submit_async`)."""

    @abstractmethod
    def prepare(
        self, job: Job[Any, Any], payload: Any, **options: Unpack[DispatchOptions]
    ) -> Prepared:
        """Validate and serialise one dispatch; raise a `JobsError` for what cannot be sent."""

    @abstractmethod
    def _submit(self, prepared: Sequence[Prepared]) -> list[DispatchReceipt]:
        """Hand validated jobs on; a receipt for each, in order."""

    @abstractmethod
    async def _submit_async(self, prepared: Sequence[Prepared]) -> list[DispatchReceipt]:
        """`_submit` for async callers."""

    @contextmanager
    def _hooked(self, prepared: list[Prepared]) -> Iterator[list[Prepared]]:
        """`prepared` as it is sent, within every hook's view of the send (`jobs_core.hooks`):
        a dispatcher of jobs adds the hooks' headers to each job."""
        yield prepared

    def prepare_many(
        self,
        items: Iterable[DispatchItem],
        delay: timedelta | None = None,
        run_at: datetime | None = None,
    ) -> list[Prepared]:
        """Validate every item (nothing is sent unless every one is valid)."""
        return [
            self.prepare(job, data, **opts) for job, data, opts in requests_of(items, delay, run_at)
        ]

    async def dispatch(
        self, job: Job[P, Any], payload: P | Mapping[str, Any], **options: Unpack[DispatchOptions]
    ) -> DispatchReceipt:
        """Validate `payload` and hand the job on; see `JobDispatcherPort`."""
        with self._hooked([self.prepare(job, payload, **options)]) as prepared:
            return (await self._submit_async(prepared))[0]

    def dispatch_sync(
        self, job: Job[P, Any], payload: P | Mapping[str, Any], **options: Unpack[DispatchOptions]
    ) -> DispatchReceipt:
        """`dispatch` for sync code (Django views, Flask, scripts)."""
        with self._hooked([self.prepare(job, payload, **options)]) as prepared:
            return self._submit(prepared)[0]

    async def dispatch_many(
        self, items: Iterable[DispatchItem], **options: Unpack[BatchOptions]
    ) -> list[DispatchReceipt]:
        """Validate every item, then hand them all on (one round trip where the backend allows)."""
        with self._hooked(self.prepare_many(items, **options)) as prepared:
            return await self._submit_async(prepared)

    def dispatch_many_sync(
        self, items: Iterable[DispatchItem], **options: Unpack[BatchOptions]
    ) -> list[DispatchReceipt]:
        """`dispatch_many` for sync code."""
        with self._hooked(self.prepare_many(items, **options)) as prepared:
            return self._submit(prepared)

    # -- events (C40) ---------------------------------------------------------------------

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES

    def prepare_send(
        self,
        event: Event[Any],
        data: Any,
        *,
        id: str | None = None,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
    ) -> PreparedEvent[Prepared]:
        """Validate one `send`: its data, its options, and each triggered job's dispatch,
        keyed by the event's id when one is given (`<job>:<id>`: a repeat runs no job)."""
        model, body, event_id = prepare_event(event, data, self.max_payload_bytes, id)
        eta = resolve_eta(delay, run_at)
        jobs = [
            self.prepare(job, model, delay=delay, run_at=run_at, idempotency_key=id)
            for job in event.jobs
        ]
        return PreparedEvent(event, model, body, event_id, id is not None, eta, jobs)

    def _submit_events(self, events: Sequence[PreparedEvent[Prepared]]) -> list[EventReceipt]:
        """Fan the events out: every triggered job of every event in one `_submit` (all or
        nothing, C6). A backend whose server fans events out (Inngest) overrides this."""
        with self._hooked([p for e in events for p in e.jobs]) as flat:
            return _event_receipts(events, self._submit(flat) if flat else [])

    async def _submit_events_async(
        self, events: Sequence[PreparedEvent[Prepared]]
    ) -> list[EventReceipt]:
        with self._hooked([p for e in events for p in e.jobs]) as flat:
            return _event_receipts(events, await self._submit_async(flat) if flat else [])

    def prepare_sends(
        self, items: Iterable[EventItem], delay: timedelta | None, run_at: datetime | None
    ) -> list[PreparedEvent[Prepared]]:
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
            raise DispatchArgumentError(
                f"send_many expects an iterable of (event, data) pairs, got a {type(items).__name__}"
            )
        prepared = []
        for item in items:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise DispatchArgumentError(
                    f"send_many expects (event, data) pairs, got a {type(item).__name__}"
                )
            prepared.append(self.prepare_send(item[0], item[1], delay=delay, run_at=run_at))
        return prepared

    async def send(
        self, event: Event[M], data: M | Mapping[str, Any], **options: Unpack[SendOptions]
    ) -> EventReceipt:
        """Validate `data` and run every job `event` triggers once with it; see
        `JobDispatcherPort.send`."""
        return (await self._submit_events_async([self.prepare_send(event, data, **options)]))[0]

    def send_sync(
        self, event: Event[M], data: M | Mapping[str, Any], **options: Unpack[SendOptions]
    ) -> EventReceipt:
        """`send` for sync code."""
        return self._submit_events([self.prepare_send(event, data, **options)])[0]

    async def send_many(
        self, items: Iterable[EventItem], **options: Unpack[BatchOptions]
    ) -> list[EventReceipt]:
        """Send several events; nothing is sent unless every one is valid."""
        prepared = self.prepare_sends(items, options.get("delay"), options.get("run_at"))
        return await self._submit_events_async(prepared)

    def send_many_sync(
        self, items: Iterable[EventItem], **options: Unpack[BatchOptions]
    ) -> list[EventReceipt]:
        """`send_many` for sync code."""
        prepared = self.prepare_sends(items, options.get("delay"), options.get("run_at"))
        return self._submit_events(prepared)


def _event_receipts(
    events: Sequence[PreparedEvent[Any]], receipts: Sequence[DispatchReceipt]
) -> list[EventReceipt]:
    """One `EventReceipt` per event, from the receipts of its jobs (in order)."""
    found = []
    remaining = iter(receipts)
    for e in events:
        mine = tuple(next(remaining) for _ in e.jobs)
        names = tuple(job.name for job in e.event.jobs)
        repeat = bool(mine) and all(r.deduplicated for r in mine)
        found.append(EventReceipt(e.event.name, e.event_id, names, repeat, mine))
    return found


class BaseDispatcher(PortMethods[PreparedJob]):
    """The shared dispatch path; an adapter implements `_send` (one round trip per call).

    An adapter declares what its backend cannot do, and the core refuses it before anything is
    sent: `max_delay` is the longest `delay`/`run_at` the backend keeps a job waiting (None: no
    limit), with `max_delay_reason` saying why.
    """

    backend_name: str = "base"
    max_delay: timedelta | None = None
    max_delay_reason: str = ""
    enqueues_in_store_transaction: bool = False
    """True where the jobs go to the Redis that holds the idempotency keys and the adapter
    implements `_enqueue_in`: a keyed dispatch then claims its key and enqueues its job in one
    transaction (`RedisIdempotencyStore.send_claiming`), and no crash can leave one without the
    other. Otherwise the core claims the keys (pending), sends, then confirms the claims, or
    releases them if the send failed (docs/dispatching.md: the crash windows per broker)."""
    runs_jobs_in_dispatch: bool = False
    """True where a job runs, and may give up, inside `dispatch` (inline): only there can a
    give-up raise `JobFailedError` from `dispatch` or call `on_error`."""

    def __init__(
        self,
        *,
        instrumentation: Instrumentation | None = None,
        idempotency: IdempotencyStore | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        timeout: float = DEFAULT_DISPATCH_TIMEOUT,
        on_error: ErrorCallback | None = None,
        raise_on_failure: bool | None = None,
    ) -> None:
        self.instrumentation = instrumentation
        self.idempotency = idempotency
        self.max_payload_bytes = max_payload_bytes
        self.timeout = timeout
        if not self.runs_jobs_in_dispatch and (on_error is not None or raise_on_failure):
            option = "on_error=" if on_error is not None else "raise_on_failure=True"
            raise JobConfigError(
                f"the {self.backend_name} backend cannot honour {option}: its jobs run, and give "
                "up, later in a worker, never inside dispatch. Act on a give-up with the job's "
                "on_failure= (called on every backend) and pass raise_on_failure=False, which "
                "every backend accepts, for the same behaviour on all of them"
            )
        self.on_error = on_error
        self.raise_on_failure = (
            self.runs_jobs_in_dispatch if raise_on_failure is None else raise_on_failure
        )

    @property
    def instrumentation(self) -> Instrumentation:
        """Where this dispatcher's events go (besides the default logging)."""
        return self._instrumentation

    @instrumentation.setter
    def instrumentation(self, value: Instrumentation | None) -> None:
        self._instrumentation = value if value is not None else DEFAULT_LOGGING
        self.events = with_logging(value)
        self._wants = interest(self.events)

    @contextmanager
    def _hooked(self, prepared: list[PreparedJob]) -> Iterator[list[PreparedJob]]:
        if not HOOKS or not prepared:
            yield prepared
            return
        jobs = [Sending(p.name, p.dispatch_id, p.headers) for p in prepared]
        with dispatching(self.backend_name, jobs) as headers:
            yield [
                dataclasses.replace(p, headers=h) if h else p
                for p, h in zip(prepared, headers, strict=True)
            ]

    # -- events: runs waiting for them (C42) ---------------------------------------------

    waits: Any = None
    """Where runs waiting for events are kept (`jobs_core.steps.waits`), for `send` to resume
    them; None where the backend resumes them itself (Inngest) or there is no such store."""

    def _submit_events(self, events: Sequence[PreparedEvent[PreparedJob]]) -> list[EventReceipt]:
        receipts = super()._submit_events(events)
        self._resume_waiting(events)
        return receipts

    async def _submit_events_async(
        self, events: Sequence[PreparedEvent[PreparedJob]]
    ) -> list[EventReceipt]:
        receipts = await super()._submit_events_async(events)
        if self.waits is not None:
            await asyncio.to_thread(self._resume_waiting, events)
        return receipts

    def _resume_waiting(self, events: Sequence[PreparedEvent[PreparedJob]]) -> None:
        """Deliver again the runs that wait for these events, each once, with its event: a
        wait sees the events sent after it began (C42)."""
        if self.waits is None:
            return
        from ..steps.resume import resume

        for e in events:
            data = e.model.model_dump(mode="json")
            try:
                waiting = self.waits.take_matching(e.event.name, data)
            except Exception:
                logger.exception(
                    "event %r sent; could not look for runs waiting for it", e.event.name
                )
                continue
            if waiting:
                registry = e.event.registry
                resume(self, self.waits, waiting, registry.get if registry else lambda _: None)

    # -- what an adapter implements -------------------------------------------------------

    @abstractmethod
    def _send(self, jobs: Sequence[PreparedJob]) -> Sequence[str]:
        """Enqueue `jobs` (in one round trip where the library allows) and return their ids.

        Raise anything on failure: it becomes a `DispatchError`; raise `PartialSend` when the
        backend took some of them. Return the backend's id for each job, in order (usually
        `job.dispatch_id`).
        """

    def _enqueue_in(self, transaction: Any, jobs: Sequence[PreparedJob]) -> None:
        """Add to `transaction` (a redis-py pipeline in MULTI) the commands that enqueue
        `jobs`: what an adapter that `enqueues_in_store_transaction` implements."""
        raise NotImplementedError

    def _check(self, prepared: PreparedJob) -> None:
        """Refuse, before anything is sent, what the backend would refuse about one job: raise
        a `JobsError` (`JobPayloadError`, `DispatchError`, `JobConfigError`). None by default."""
        return None

    # -- shared machinery -----------------------------------------------------------------

    def prepare(
        self,
        job: Job[Any, Any],
        payload: Any,
        *,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PreparedJob:
        """Validate and serialise one dispatch; a bad payload or option is recorded as `failed`
        and raised (C4, C5): every error is a `JobsError`. The options are named here, not
        `**options`, so a keyed dispatch does not copy its options into a second dict."""
        try:
            prepared = prepare_dispatch(
                job, payload, self.max_payload_bytes, delay, run_at, idempotency_key, headers
            )
        except (JobPayloadError, DispatchArgumentError, JobConfigError) as error:
            if isinstance(job, Job):
                self._record_schedule_failure(job.name, None, error)
            raise
        if prepared.eta is not None and self.max_delay is not None:
            self._check_delay(job, prepared.eta)
        try:
            self._check(prepared)
        except JobsError as error:
            self._record_schedule_failure(job.name, None, error)
            raise
        return prepared

    def _check_delay(self, job: Job[Any, Any], eta: datetime) -> None:
        assert self.max_delay is not None
        wait = eta - datetime.now(timezone.utc)
        if wait > self.max_delay:
            error = DispatchError(
                job.name,
                f"a delay of {wait.total_seconds():.0f}s is longer than the {self.backend_name} "
                f"backend keeps a job waiting ({self.max_delay.total_seconds():.0f}s"
                + (f": {self.max_delay_reason}" if self.max_delay_reason else "")
                + ")",
            )
            self._record_schedule_failure(job.name, None, error)
            raise error

    def _claim(
        self, prepared: Sequence[PreparedJob]
    ) -> tuple[list[PreparedJob], dict[int, str], list[Claim]]:
        """Claim the keys of `prepared`: (the jobs to send, the duplicates as index -> the id
        that holds the key, the claims made). A store that fails is a `DispatchError`."""
        firsts, claims, repeats = _keyed(prepared)
        if self.idempotency is None or not claims:
            return list(prepared), {}, []
        try:
            held = self.idempotency.claim(claims, self.timeout)
        except Exception as error:
            self._fail_all(prepared, error)
        duplicates = _duplicates(prepared, firsts, held, repeats)
        mine = [c for c, h in zip(claims, held) if h is None]
        return [p for i, p in enumerate(prepared) if i not in duplicates], duplicates, mine

    def _fail_all(self, prepared: Sequence[PreparedJob], error: BaseException) -> Any:
        for p in prepared:
            self._record_schedule_failure(p.name, p.dispatch_id, error)
        names = ", ".join(sorted({p.name for p in prepared}))
        if isinstance(error, DispatchError):
            raise error
        raise DispatchError(names, error) from error

    def _receipts(
        self, prepared: Sequence[PreparedJob], results: Sequence[str], duplicates: dict[int, str]
    ) -> list[DispatchReceipt]:
        """One receipt per job: `results` are the sent jobs' ids, the others are duplicates."""
        receipts = []
        sent = iter(results)
        for i, p in enumerate(prepared):
            if i in duplicates:
                receipts.append(DispatchReceipt(p.name, duplicates[i], self.backend_name, True))
            else:
                receipts.append(self._receipt(p.name, next(sent)))
        return receipts

    def _receipt(self, name: str, dispatch_id: str) -> DispatchReceipt:
        """The receipt of a job that was sent, with its `scheduled` event."""
        if self._wants("scheduled"):  # built only when something keeps it
            event = JobEvent("scheduled", "schedule", name, dispatch_id, 0, self.backend_name)
            safe_record(self.events, event)
        return DispatchReceipt(name, dispatch_id, self.backend_name)

    def _submit(self, prepared: Sequence[PreparedJob]) -> list[DispatchReceipt]:
        if self.enqueues_in_store_transaction and any(map(_KEY_OF, prepared)):
            return self._submit_claiming(prepared)
        to_send, duplicates, claims = self._claim(prepared)
        results: Sequence[str] = ()
        if to_send:
            try:
                results = self._send(to_send)
            except PartialSend as partial:
                self._fail_partly(to_send, partial, claims)
            except Exception as error:
                self._settle(claims, sent=False)
                self._fail_all(to_send, error)
        self._settle(claims, sent=True)
        return self._receipts(prepared, results, duplicates)

    def _submit_claiming(self, prepared: Sequence[PreparedJob]) -> list[DispatchReceipt]:
        """Keys claimed and jobs enqueued in one Redis transaction: all or nothing."""
        assert isinstance(self.idempotency, RedisIdempotencyStore)
        firsts, claims, repeats = _keyed(prepared)
        keyless = [i for i, p in enumerate(prepared) if not p.idempotency_key]

        def enqueue(transaction: Any, free: list[int]) -> None:
            sending = sorted([firsts[j] for j in free] + keyless)
            self._enqueue_in(transaction, [prepared[i] for i in sending])

        try:
            held = self.idempotency.send_claiming(claims, enqueue, self.timeout)
        except Exception as error:
            self._fail_all(prepared, error)
        duplicates = _duplicates(prepared, firsts, held, repeats)
        results = [p.dispatch_id for i, p in enumerate(prepared) if i not in duplicates]
        return self._receipts(prepared, results, duplicates)

    def _fail_partly(
        self, to_send: Sequence[PreparedJob], partial: PartialSend, claims: list[Claim]
    ) -> None:
        """The backend took the first jobs and refused the rest: receipts (and `scheduled`)
        for those it took, `failed` for the others, and a `DispatchError` that lists both."""
        taken = len(partial.ids)
        accepted = self._receipts(to_send[:taken], partial.ids, {})
        refused = to_send[taken:]
        refused_ids = {p.dispatch_id for p in refused if p.idempotency_key}
        self._settle([c for c in claims if c.dispatch_id not in refused_ids], sent=True)
        self._settle([c for c in claims if c.dispatch_id in refused_ids], sent=False)
        for p in refused:
            self._record_schedule_failure(p.name, p.dispatch_id, partial.cause)
        names = ", ".join(sorted({p.name for p in refused}))
        error = DispatchError(
            names,
            f"{describe_error(partial.cause)} ({taken} of {len(to_send)} jobs were accepted "
            "before the refusal and will run: see DispatchError.accepted)",
        )
        error.accepted = tuple(accepted)
        raise error from partial.cause

    async def _submit_async(self, prepared: Sequence[PreparedJob]) -> list[DispatchReceipt]:
        """Async dispatch: by default the sync path in a worker thread, so the loop never blocks."""
        return await asyncio.to_thread(self._submit, prepared)

    def close(self) -> None:
        """Release what the dispatcher holds (connections); it cannot be used afterwards."""
        close = getattr(self.idempotency, "close", None)
        if close is not None:
            close()

    def _settle(self, claims: list[Claim], *, sent: bool) -> None:
        """Confirm the claims of jobs that were sent, release those of jobs that were not. A
        store that fails here is logged: an unconfirmed claim lapses on its own (a resend
        then runs again), an unreleased one too (a resend waits for it)."""
        if not claims or self.idempotency is None:
            return
        try:
            (self.idempotency.confirm if sent else self.idempotency.release)(claims)
        except Exception as error:
            logger.warning(
                "could not %s idempotency keys %s: %s",
                "confirm" if sent else "release",
                [c.key for c in claims],
                describe_error(error),
            )

    def _record_schedule_failure(
        self, job_name: str, dispatch_id: str | None, error: BaseException
    ) -> None:
        safe_record(
            self.events,
            JobEvent(
                "failed",
                "schedule",
                job_name,
                dispatch_id,
                0,
                self.backend_name,
                error=describe_error(error),
            ),
        )
