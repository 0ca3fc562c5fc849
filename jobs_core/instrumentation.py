"""Instrumentation: one `JobEvent` per step of a job's life, the same on every backend (C19)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal, Protocol, runtime_checkable

EventKind = Literal[
    "scheduled",
    "started",
    "completed",
    "retrying",
    "failed",
    "step.started",
    "step.completed",
    "step.failed",
    "run.suspended",
    "run.resumed",
]
"""The job's events, and those of a job with steps (C39): `step.*` per step attempt (with its
`step_id`), `run.suspended` / `run.resumed` around a sleep, a wait for an event or an invoke."""
Phase = Literal["schedule", "execute"]

logger = logging.getLogger("jobs_core")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """What happened to a job: `kind` in `phase`, for which dispatch, on which attempt (0-based).

    `error` is `"ExcType: message"` for `retrying` and `failed` (and `step.failed`); `duration`
    is set on execute events that end a run (`completed`, `retrying`, `failed`), `retry_in` on
    `retrying` (and `step.failed`), and `step_id` on the events of a step.
    """

    kind: EventKind
    phase: Phase
    job_name: str
    dispatch_id: str | None
    attempt: int
    backend: str
    error: str | None = None
    at: datetime = field(default_factory=_now)
    duration: timedelta | None = None
    retry_in: timedelta | None = None
    step_id: str | None = None


@runtime_checkable
class Instrumentation(Protocol):
    """Receives every `JobEvent`; implementations must be quick and must not raise.

    One may also have `wants(kind) -> bool`: events of a kind it does not want are then not
    even built (the default logging wants a kind when its logger is enabled for that kind's
    level). Without `wants`, every event is built and recorded.
    """

    def record(self, event: JobEvent) -> None: ...


Wants = Callable[[EventKind], bool]
"""Whether an instrumentation wants events of a kind (see `Instrumentation`)."""


def _every_kind(kind: EventKind) -> bool:
    return True


def interest(instrumentation: Instrumentation) -> Wants:
    """`instrumentation.wants`, or "every kind" for an instrumentation without it."""
    wants = getattr(instrumentation, "wants", None)
    return wants if callable(wants) else _every_kind


_LEVELS: dict[str, int] = {
    "scheduled": logging.DEBUG,
    "started": logging.DEBUG,
    "completed": logging.DEBUG,
    "retrying": logging.WARNING,
    "failed": logging.ERROR,
    "step.started": logging.DEBUG,
    "step.completed": logging.DEBUG,
    "step.failed": logging.WARNING,
    "run.suspended": logging.DEBUG,
    "run.resumed": logging.DEBUG,
}
"""The level of each kind's line: one line per event, whichever backend runs the job.

A worker at INFO (the default of `jobs-core worker`) writes nothing for a run that went well,
one WARNING line per retry and one ERROR line per give-up: what an operator acts on. `started`
and `completed` are DEBUG: a line for every job that went well cost a production worker more
than all the rest of the core's work on the job (docs/instrumentation.md, docs/performance.md);
a worker at DEBUG writes them, one line each. The worker entry points drop their library's own
line about the same event (Celery's "received", "succeeded", "retry" and "raised unexpected",
Dramatiq's "Retrying" and "Aborting"), so these lines are the record of every run."""


class LoggedOutcomes:
    """The runs whose `retrying` or `failed` line jobs_core's logging wrote lately (the last
    `size` dispatch ids of each kind): a backend's worker drops its library's own line about
    the same outcome when `logged(kind, dispatch_id)`, and keeps it (a failure jobs_core did not
    see, such as a broker error while sending a retry) otherwise."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._ids: dict[str, OrderedDict[str, None]] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, dispatch_id: str) -> None:
        with self._lock:
            ids = self._ids.setdefault(kind, OrderedDict())
            ids[dispatch_id] = None
            ids.move_to_end(dispatch_id)
            if len(ids) > self.size:
                ids.popitem(last=False)

    def logged(self, kind: str, dispatch_id: object) -> bool:
        """Whether jobs_core logged `kind` for the run `dispatch_id` lately."""
        if not isinstance(dispatch_id, str):
            return False
        with self._lock:
            return dispatch_id in self._ids.get(kind, {})


LOGGED_OUTCOMES = LoggedOutcomes()
"""What the default logging of this process wrote about runs' outcomes (`LoggedOutcomes`)."""


class LoggingInstrumentation:
    """Logs each event on the `jobs_core` logger: failures at ERROR, retries at WARNING, the
    rest (`scheduled`, `started`, `completed`) at DEBUG."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.log = log or logger

    def wants(self, kind: EventKind) -> bool:
        """True when the logger is enabled for the level `kind` is logged at (always, for a
        subclass with a `record` of its own)."""
        if type(self).record is not LoggingInstrumentation.record:
            return True
        return self.log.isEnabledFor(_LEVELS[kind])

    def record(self, event: JobEvent) -> None:
        level = _LEVELS[event.kind]
        if not self.log.isEnabledFor(level):
            return
        parts = [
            f"job {event.kind}: {event.job_name}",
            f"dispatch_id={event.dispatch_id}",
            f"attempt={event.attempt}",
            f"backend={event.backend}",
            f"phase={event.phase}",
        ]
        if event.duration is not None:
            parts.append(f"duration={event.duration.total_seconds():.3f}s")
        if event.retry_in is not None:
            parts.append(f"retry_in={event.retry_in.total_seconds():.3f}s")
        if event.step_id is not None:
            parts.append(f"step={event.step_id}")
        if event.error:
            parts.append(f"error={event.error}")
        self.log.log(level, " ".join(parts), extra={"job_event": event})
        if event.kind in ("retrying", "failed") and event.dispatch_id is not None:
            LOGGED_OUTCOMES.add(event.kind, event.dispatch_id)


class MultiInstrumentation:
    """Sends each event to several instrumentations, in order (metrics and tracing, say)."""

    def __init__(self, *targets: Instrumentation) -> None:
        self.targets = targets

    def record(self, event: JobEvent) -> None:
        """Send `event` to each target that wants its kind (every target without `wants`)."""
        for target in self.targets:
            if interest(target)(event.kind):
                target.record(event)

    def wants(self, kind: EventKind) -> bool:
        return any(interest(target)(kind) for target in self.targets)

    def __repr__(self) -> str:
        return f"MultiInstrumentation{self.targets!r}"


DEFAULT_LOGGING = LoggingInstrumentation()
"""The logging every dispatcher and worker does, whatever `instrumentation=` they are given."""


def _logs(instrumentation: Instrumentation) -> bool:
    if isinstance(instrumentation, LoggingInstrumentation):
        return True
    if isinstance(instrumentation, MultiInstrumentation):
        return any(_logs(target) for target in instrumentation.targets)
    return False


def with_logging(instrumentation: Instrumentation | None) -> Instrumentation:
    """`instrumentation` plus the default logging, unless it already logs.

    Passing `instrumentation=` to a dispatcher or worker adds to the log lines on the
    `jobs_core` logger, it does not replace them: configure that logger to quieten them.
    """
    if instrumentation is None:
        return DEFAULT_LOGGING
    if _logs(instrumentation):
        return instrumentation
    return MultiInstrumentation(DEFAULT_LOGGING, instrumentation)


def safe_record(instrumentation: Instrumentation, event: JobEvent) -> None:
    """Record `event`, logging (not raising) if the instrumentation itself fails."""
    try:
        instrumentation.record(event)
    except Exception:
        logger.exception("instrumentation %r failed to record %s", instrumentation, event.kind)


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
