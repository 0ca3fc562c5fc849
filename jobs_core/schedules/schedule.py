"""Schedules: dispatch a job with a fixed payload at each tick of a cron expression (C29).

A `Schedule` is defined on a registry with `jobs.schedule(...)`, and everything about it is
checked then: the name, the cron expression (parsed by cronsim, which follows Debian cron), the
timezone (`zoneinfo`) and the payload (the job's own model). A tick is an instant; each tick is
dispatched with an idempotency key made of the schedule's name and the tick in UTC, so however
many schedulers run, the backend's idempotency makes one dispatch of it (C30).

Daylight-saving changes follow Debian cron, as cronsim does: a fixed local time that occurs twice
(the autumn change) fires once, at its first occurrence; one that does not occur (the spring
change) fires once, just after the change. An expression with `*` in its minute or hour field
follows real time instead: `0 * * * *` ticks every real hour, both repeated ones included.
"""

from __future__ import annotations

import re
import typing
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Generic, Protocol

from cronsim import CronSim, CronSimError

from ..errors import JobConfigError, JobPayloadError
from ..jobs.job import Job, P
from ..jobs.names import check_name
from ..jobs.payload import to_wire, validate_payload


class _Jobs(Protocol):
    """What a schedule needs of its registry: to check that its job is one of the registry's."""

    def get(self, name: str) -> Job[Any, Any] | None: ...


UTC = timezone.utc

_FIELD = re.compile(
    r"^(\*|\d+|[A-Za-z]{3})(-(\d+|[A-Za-z]{3}))?(/\d+)?(,(\*|\d+|[A-Za-z]{3})(-(\d+|[A-Za-z]{3}))?(/\d+)?)*$"
)
"""One field of a portable cron expression: lists of values, ranges and steps, with month and
day names. cronsim also knows `L`, `W`, `#` and `?`, which Celery, Inngest and most crons do
not: they are refused so that a schedule means the same on every backend."""

_FIRST_SEARCH_SPAN = timedelta(minutes=2)
_MAX_SEARCH_SPAN = timedelta(days=366 * 30)


@dataclass(frozen=True, slots=True, eq=False)
class Schedule(Generic[P]):
    """Dispatch `job` with `payload` at each tick of `cron` in `timezone`.

    Made by `JobRegistry.schedule`, which checks everything. `payload` is an instance of the
    job's model. Ticks are aware datetimes in UTC.
    """

    name: str
    cron: str
    job: Job[P, Any]
    payload: P
    timezone: str
    tz: tzinfo

    def ticks(self, after: datetime) -> Iterator[datetime]:
        """The ticks strictly after `after`, in order (an endless iterator)."""
        after = _aware(after, "after")
        for local in CronSim(self.cron, after.astimezone(self.tz)):
            tick = local.astimezone(UTC)
            # Started inside a repeated hour, cronsim can name that hour's first occurrence,
            # which lies before `after`: it belongs to an earlier window.
            if tick > after:
                yield tick

    def next_tick(self, after: datetime) -> datetime | None:
        """The first tick strictly after `after`; None if the expression never fires again."""
        return next(self.ticks(after), None)

    def next_ticks(self, count: int, after: datetime | None = None) -> list[datetime]:
        """The next `count` ticks after `after` (default: now)."""
        found: list[datetime] = []
        for tick in self.ticks(after or datetime.now(UTC)):
            if len(found) == count:
                break
            found.append(tick)
        return found

    def latest_tick(self, at: datetime, *, after: datetime | None = None) -> datetime | None:
        """The last tick at or before `at` (and strictly after `after`, if given), or None."""
        at = _aware(at, "at")
        after = _aware(after, "after") if after is not None else None
        span = _FIRST_SEARCH_SPAN
        while True:
            start, bounded = at - span, False
            if after is not None and start <= after:
                start, bounded = after, True
            found = None
            for tick in self.ticks(start):
                if tick > at:
                    break
                found = tick
            if found is not None or bounded or span >= _MAX_SEARCH_SPAN:
                return found
            span *= 2

    def idempotency_key(self, tick: datetime) -> str:
        """The key a tick is dispatched with: the schedule's name and the tick in UTC (C30)."""
        return f"{self.name}@{_aware(tick, 'tick').astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"

    def __repr__(self) -> str:
        return (
            f"Schedule(name={self.name!r}, cron={self.cron!r}, timezone={self.timezone!r}, "
            f"job={self.job.name!r})"
        )


def define_schedule(
    registry: _Jobs,
    name: str,
    *,
    cron: str,
    job: Job[P, Any],
    payload: P | Mapping[str, Any] | None,
    timezone: str,
) -> Schedule[P]:
    """Check a schedule's definition and build it; every mistake is a `JobConfigError` (C29)."""
    check_name(name, "schedule")
    if not isinstance(job, Job) or registry.get(job.name) is not job:
        raise JobConfigError(
            f"schedule {name!r}: job= must be a job defined in this registry, got {job!r}"
        )
    tz = _zone(name, timezone)
    cron = _check_cron(name, cron)
    model = _check_payload(name, job, {} if payload is None else payload)
    schedule = Schedule(name, cron, job, model, timezone, tz)
    if schedule.next_tick(datetime.now(UTC)) is None:
        raise JobConfigError(f"schedule {name!r}: the cron expression {cron!r} never fires")
    return schedule


def _zone(name: str, key: Any) -> tzinfo:
    if not isinstance(key, str) or not key:
        raise JobConfigError(
            f"schedule {name!r}: timezone= must be an IANA name such as 'Europe/Paris', got {key!r}"
        )
    if key == "UTC":
        return UTC
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise JobConfigError(
            f"schedule {name!r}: unknown timezone {key!r} (use an IANA name such as "
            "'Europe/Paris' or 'UTC')"
        ) from None


def _check_cron(name: str, cron: Any) -> str:
    if not isinstance(cron, str):
        raise JobConfigError(f"schedule {name!r}: cron= must be a str, got {cron!r}")
    fields = cron.split()
    if len(fields) != 5:
        raise JobConfigError(
            f"schedule {name!r}: invalid cron expression {cron!r}: it needs 5 fields "
            "(minute hour day-of-month month day-of-week), found "
            f"{len(fields)}"
        )
    try:
        CronSim(" ".join(fields), datetime.now(UTC))
    except CronSimError as exc:
        raise JobConfigError(
            f"schedule {name!r}: invalid cron expression {cron!r}: {exc}"
        ) from None
    for field in fields:
        if not _FIELD.match(field):
            raise JobConfigError(
                f"schedule {name!r}: cron expression {cron!r}: {field!r} is not portable "
                "(L, W, # and ? are not understood by every backend)"
            )
    return " ".join(fields)


def _check_payload(name: str, job: Job[P, Any], payload: Any) -> P:
    try:
        model = validate_payload(job, payload)
        to_wire(job, model)
    except JobPayloadError as exc:
        raise JobConfigError(f"schedule {name!r}: {exc}") from None
    return typing.cast(P, model)


def _aware(moment: datetime, what: str) -> datetime:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {moment!r}")
    return moment
