"""Typed events: `JobRegistry.event(name, Model)` makes an `Event`, jobs with `on=event` run
once per event sent (fan-out), and `JOB_FAILED` is sent when any job gives up (C40, C44).

An event belongs to the registry that defined it, which knows the jobs it triggers: a
dispatcher that sends it fans it out to those (Celery, Dramatiq, inline, the outbox) or sends
it as one event that the server fans out (Inngest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from ..errors import JobConfigError, JobPayloadError
from ..jobs.names import check_name
from ..jobs.payload import validate_payload

if TYPE_CHECKING:
    from ..dispatch.port import DispatchReceipt
    from ..jobs.job import Job
    from ..jobs.registry import JobRegistry

M = TypeVar("M", bound=BaseModel)

MAX_EVENT_NAME = 255
"""Longest event name (Inngest's limit, kept on every backend)."""


@dataclass(frozen=True, eq=False)
class Event(Generic[M]):
    """An event: its name and the model of its data. Made by `JobRegistry.event`; jobs defined
    with `on=` it run once for each one sent (`send`)."""

    name: str
    model: type[M]
    registry: JobRegistry[Any] | None = field(default=None, repr=False)
    """The registry that defined it (None: `JOB_FAILED`, which every registry may use)."""

    @property
    def jobs(self) -> tuple[Job[Any, Any], ...]:
        """The jobs this event triggers, in the order they were defined."""
        return () if self.registry is None else self.registry.jobs_on(self)

    def validate(self, data: Any) -> M:
        """`data` as this event's model (an instance of it, or a mapping of its fields), or a
        `JobPayloadError` naming the event (C4: nothing is sent)."""
        shape: Any = _Shape(self.name, self.model)
        try:
            return validate_payload(shape, data)  # type: ignore[return-value]
        except JobPayloadError as error:
            told = str(error).replace(
                f"payload for job {self.name!r}", f"data for event {self.name!r}"
            )
            raise JobPayloadError(self.name, error.errors, told) from None


@dataclass(frozen=True)
class _Shape:
    """What payload validation reads of a job, for an event's data."""

    name: str
    payload_model: type[BaseModel]


@dataclass(frozen=True, slots=True)
class EventReceipt:
    """Proof that an event was accepted: its name and id (the one given with `id=`, else one
    chosen here), the jobs it triggers, and whether every one of those was a repeat of a send
    with the same `id` within 24 h (`deduplicated`). `dispatches` has one `DispatchReceipt`
    per triggered job where the core fanned the event out (empty on Inngest, whose server
    does)."""

    event_name: str
    event_id: str
    jobs: tuple[str, ...]
    deduplicated: bool = False
    dispatches: tuple[DispatchReceipt, ...] = ()


class JobFailed(BaseModel):
    """The data of `JOB_FAILED`: which job gave up, its run (`dispatch_id`), the attempt it
    gave up on, and the error's type and message (never the payload: C23)."""

    job_name: str
    dispatch_id: str | None
    attempt: int
    error: str


JOB_FAILED_NAME = "jobs_core/job.failed"

JOB_FAILED: Event[JobFailed] = Event(JOB_FAILED_NAME, JobFailed)
"""Sent once whenever a job gives up (retries spent, `PermanentError`, bad input), on every
backend (C44): `@jobs.job("ops.alert", on=JOB_FAILED)`. A job triggered by it that gives up
does not send it again (no loop)."""


def check_event_name(name: object) -> str:
    """An event name as every backend takes it (C1's rule, and Inngest's)."""
    checked = check_name(name, "event")
    if checked.lower().startswith("inngest/"):
        raise JobConfigError(f"event name {checked!r}: 'inngest/' is Inngest's own prefix")
    if len(checked) > MAX_EVENT_NAME:
        raise JobConfigError(f"event name {checked[:60]!r}...: at most {MAX_EVENT_NAME} characters")
    return checked
