"""Flow control on a job (C25–C28): `Concurrency` and `Throttle`.

The options are checked when the job is defined, against its payload model. Each backend maps
them onto its own mechanism where it has one (Inngest's function `concurrency` and `throttle`),
and the core's limiters elsewhere (`jobs_core.flow.limiter` within one process for inline,
`jobs_core.flow.redis_limiter` on Redis for Celery and Dramatiq). A backend that cannot honour
an option exactly refuses it with `flow_refusal` when its worker is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel

from ..errors import JobConfigError
from ..jobs.payload import key_text, payload_field, require_field


def _check_limit(what: str, limit: Any) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise JobConfigError(f"{what}.limit must be an int >= 1, got {limit!r}")


def _check_key(what: str, key: Any) -> None:
    if key is not None and (not isinstance(key, str) or not key):
        raise JobConfigError(f"{what}.key must be a payload field's name or None, got {key!r}")


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most `limit` runs of the job at once, across every worker process; with `key` (a
    payload field), at most `limit` per value of that field. Excess runs wait their turn; waiting
    drops no run and uses no attempt."""

    limit: int
    key: str | None = None

    def __post_init__(self) -> None:
        _check_limit("Concurrency", self.limit)
        _check_key("Concurrency", self.key)


@dataclass(frozen=True, slots=True)
class Throttle:
    """At most `limit` runs of the job start in any window of length `period` (a sliding
    window), per value of the payload field `key` when given. Excess runs wait their turn;
    waiting drops no run and uses no attempt. Where jobs_core holds the window (Celery,
    Dramatiq, inline) every attempt is a start: a retry calls the throttled service again."""

    limit: int
    period: timedelta
    key: str | None = None

    def __post_init__(self) -> None:
        _check_limit("Throttle", self.limit)
        if not isinstance(self.period, timedelta) or self.period <= timedelta(0):
            raise JobConfigError(
                f"Throttle.period must be a positive timedelta, got {self.period!r}"
            )
        _check_key("Throttle", self.key)


@dataclass(frozen=True, slots=True)
class Resource:
    """One limit a run must pass: `kind` `c` (a concurrency slot) or `t` (a throttle start),
    `name` unique per job, option and key value (`{job}:c` or `{job}:c:=<value>`)."""

    kind: Literal["c", "t"]
    name: str
    limit: int
    seconds: float = 0.0
    """The throttle's period; unused for concurrency."""


@dataclass(frozen=True, slots=True)
class FlowControl:
    """A job's flow-control options, checked against its payload model (see `flow_control`)."""

    concurrency: Concurrency | None = None
    throttle: Throttle | None = None
    limited: bool = field(init=False, default=False)
    """True when runs must pass a limit (concurrency or throttle) before they start."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "limited", bool(self.concurrency or self.throttle))

    def resources(self, job_name: str, data: Any) -> tuple[Resource, ...]:
        """The limits a run of `job_name` with the wire payload `data` must pass. A key field
        missing from `data` (a malformed message, which the worker then refuses) reads as null."""
        found: list[Resource] = []
        options: tuple[tuple[Literal["c", "t"], Concurrency | Throttle | None], ...] = (
            ("c", self.concurrency),
            ("t", self.throttle),
        )
        for kind, option in options:
            if option is None:
                continue
            name = f"{{{job_name}}}:{kind}"
            if option.key is not None:
                name += ":=" + key_text(payload_field(data, option.key))
            seconds = option.period.total_seconds() if isinstance(option, Throttle) else 0.0
            found.append(Resource(kind, name, option.limit, seconds))
        return tuple(found)

    def describe(self) -> dict[str, Any]:
        """The options as plain data (for `python -m jobs_core list`)."""
        described: dict[str, Any] = {}
        if self.concurrency is not None:
            described["concurrency"] = {
                "limit": self.concurrency.limit,
                "key": self.concurrency.key,
            }
        if self.throttle is not None:
            described["throttle"] = {
                "limit": self.throttle.limit,
                "period_seconds": self.throttle.period.total_seconds(),
                "key": self.throttle.key,
            }
        return described


def flow_control(
    job_name: str,
    model: type[BaseModel],
    concurrency: Concurrency | None,
    throttle: Throttle | None,
) -> FlowControl | None:
    """The job's `FlowControl` (None without options), every option checked now (C25, C26):
    a key must be a field of the payload model."""
    if concurrency is None and throttle is None:
        return None
    for name, option, kind in (
        ("concurrency", concurrency, Concurrency),
        ("throttle", throttle, Throttle),
    ):
        if option is not None and not isinstance(option, kind):
            raise JobConfigError(
                f"job {job_name!r}: {name}= must be a {kind.__name__}, got {option!r}"
            )
        key = getattr(option, "key", None)
        if key is not None:
            require_field(job_name, model, f"{name}.key", key)
    return FlowControl(concurrency, throttle)


def flow_refusal(job_name: str, option: str, backend: str, why: str) -> JobConfigError:
    """The error a backend raises for an option it cannot honour exactly (C28)."""
    return JobConfigError(
        f"job {job_name!r}: {option} cannot be honoured exactly on the {backend} backend: {why}"
    )
