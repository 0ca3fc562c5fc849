"""What every backend's steps hold to, whoever keeps them (the core's engine, or Inngest): step
ids and their occurrences, the limits, the events, and a step's value as JSON (C34, C37, C39).
"""

from __future__ import annotations

import contextvars
import functools
import math
import re
import typing
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import pydantic_core
from pydantic import TypeAdapter

from ..errors import JobPayloadError, PermanentError, StepError, StepFailedError
from ..jobs.payload import MAX_SAFE_INTEGER, find_values

MAX_OUTPUT_BYTES = 4 * 1024 * 1024
"""Largest step value kept (as JSON): Inngest's limit, so that a job runs on every backend."""
MAX_STEPS = 1_000
"""Most steps one run may take (Inngest's limit)."""
MAX_SLEEP = timedelta(days=365)
"""Longest sleep (Inngest's limit on paid plans)."""

GIVE_UP_AT_ONCE = (PermanentError, StepError, StepFailedError, JobPayloadError)
"""What a step (or the handler) raises that no retry can mend: the run gives up."""


class RecordEvent(Protocol):
    """Where the step events go (the worker records them with the delivery's details)."""

    def __call__(
        self,
        kind: str,
        step_id: str | None = None,
        attempt: int = 0,
        error: BaseException | None = None,
        retry_in: timedelta | None = None,
    ) -> None: ...


class BackendSteps(Protocol):
    """Steps that a backend keeps itself (Inngest's own), made for one delivery by its adapter
    and handed to the core with the delivery."""

    @property
    def first_delivery(self) -> bool:
        """Whether this is the run's first delivery (`started` is recorded on it only)."""
        ...

    def bind(self, job: Any, record: RecordEvent) -> Any:
        """The handler's `step` (`Steps` or `StepsSync`, as the handler is async or not)."""
        ...


class StepRetry(Exception):
    """A step's attempt failed and the backend delivers the run again after `delay` (Inngest:
    the SDK's retry); `step.failed` is recorded already, so no `retrying` is."""

    def __init__(self, error: BaseException, delay: timedelta) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay = delay


current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jobs_core_current_step", default=None
)
"""The key of the step running in this context (a step started inside it is refused)."""


class StepKeys:
    """The keys of one delivery's steps: `(step id, occurrence)` as Inngest hashes them
    (`charge`, `charge:1`), checked as every backend checks them."""

    def __init__(self, job_name: str) -> None:
        self.job_name = job_name
        self._occurrences: Counter[str] = Counter()
        self._seen = 0

    def next(self, step_id: Any) -> str:
        """The key of the step called `step_id` now; a `StepError` for a bad id, a step inside
        a step, or one step too many."""
        if not isinstance(step_id, str) or not step_id:
            raise StepError(self.job_name, repr(step_id), "a step id is a non-empty str")
        parent = current_step.get()
        if parent is not None:
            raise StepError(self.job_name, step_id, f"a step cannot start inside step {parent!r}")
        self._seen += 1
        if self._seen > MAX_STEPS:
            raise StepError(self.job_name, step_id, f"a run takes at most {MAX_STEPS} steps")
        occurrence = self._occurrences[step_id]
        self._occurrences[step_id] += 1
        return step_id if occurrence == 0 else f"{step_id}:{occurrence}"


def sleep_end(job_name: str, key: str, when: Callable[[], datetime]) -> datetime:
    """When a sleep that begins now ends: an aware datetime at most `MAX_SLEEP` ahead."""
    try:
        at = when()
    except TypeError as error:
        raise StepError(job_name, key, f"a sleep lasts a timedelta: {error}") from None
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise StepError(job_name, key, "a sleep ends at an aware datetime")
    if at - datetime.now(timezone.utc) > MAX_SLEEP:
        raise StepError(job_name, key, f"a sleep lasts at most {MAX_SLEEP.days} days")
    return at


WAIT_TIMEOUT_RULE = "a wait's timeout is a whole number of seconds, from 1 s to a year"
"""Inngest's rule for `wait_for_event` timeouts, kept on every backend."""


def wait_timeout_ok(timeout: Any) -> bool:
    """Whether `timeout` is a timeout every backend can wait (`WAIT_TIMEOUT_RULE`)."""
    if not isinstance(timeout, timedelta):
        return False
    seconds = timeout.total_seconds()
    return 1 <= seconds <= MAX_SLEEP.total_seconds() and seconds == int(seconds)


def check_wait(job_name: str, key: str, event: Any, match: Any, timeout: Any, payload: Any) -> None:
    """A `StepError` for a wait no backend can honour (C42): a `match` field that the event's
    model or the run's payload model (`payload`) lacks, or a timeout beyond the rule."""
    fields = getattr(event, "model", None)
    if not isinstance(match, str) or fields is None or match not in fields.model_fields:
        raise StepError(
            job_name,
            key,
            f"match field {match!r} is not a field of event {getattr(event, 'name', event)!r}",
        )
    if match not in payload.model_fields:
        raise StepError(job_name, key, f"match field {match!r} is not a field of the run's payload")
    if not wait_timeout_ok(timeout):
        raise StepError(job_name, key, WAIT_TIMEOUT_RULE)


def failure_text(error: BaseException) -> str:
    """How a step's last error is told (`StepFailedError.error` on every backend)."""
    return f"{type(error).__name__}: {str(error)[:500]}"


# -- a step's value as JSON -------------------------------------------------------------------

_NOT_FINITE = re.compile(rb"Infinity|NaN")


@functools.lru_cache(maxsize=512)
def _adapter_of(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    try:
        annotation = typing.get_type_hints(target).get("return")
    except Exception:  # a builtin, a forward reference that does not resolve: no annotation
        annotation = None
    if annotation is None or annotation is Any or annotation is type(None):
        return None
    return TypeAdapter(annotation)


def output_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    """How `fn`'s value is read back: its return annotation (None: the JSON value as is)."""
    try:
        return _adapter_of(fn)
    except TypeError:  # not hashable (a callable object with __eq__): read without the cache
        return _adapter_of.__wrapped__(fn)


def to_json(
    job_name: str, key: str, adapter: TypeAdapter[Any] | None, value: Any
) -> tuple[Any, bytes]:
    """`value` as the JSON value kept for it (as Python data, and as JSON text), checked: a
    `StepError` for a value JSON cannot hold, one over 4 MB, or an integer beyond ±(2**53 - 1)
    (C34)."""
    try:
        data = adapter.dump_python(value, mode="json") if adapter is not None else value
        raw = pydantic_core.to_json(data)
    except Exception as exc:
        raise StepError(job_name, key, f"its value cannot be kept as JSON: {exc}") from None
    if _NOT_FINITE.search(raw) and any(find_values(data, _non_finite)):
        raise StepError(job_name, key, "its value holds inf or NaN, which JSON has not")
    if len(raw) > MAX_OUTPUT_BYTES:
        raise StepError(
            job_name, key, f"its value is {len(raw)} bytes as JSON; a step keeps at most 4 MB"
        )
    unsafe = [
        {"type": "int_unsafe", "loc": loc, "msg": f"integer {n} is beyond ±(2**53 - 1)"}
        for loc, n in find_values(data, _unsafe_integer)
    ]
    if unsafe:
        error = StepError(job_name, key, "its value holds an integer beyond ±(2**53 - 1)")
        raise error from JobPayloadError(job_name, unsafe)
    return data, raw


def from_json(adapter: TypeAdapter[Any] | None, data: Any) -> Any:
    """A kept JSON value (as Python data) as the step function returned it."""
    return adapter.validate_python(data) if adapter is not None else data


def _unsafe_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)
