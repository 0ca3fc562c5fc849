"""Configuration from the environment, and `create_dispatcher()` which picks the backend (C24)."""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import re
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .dispatch.dispatcher import DEFAULT_DISPATCH_TIMEOUT
from .errors import JobConfigError
from .jobs.payload import DEFAULT_MAX_PAYLOAD_BYTES

_FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

logger = logging.getLogger("jobs_core.config")


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, for logs and reprs (C23)."""
    return re.sub(r"(?<=://)([^:/@]*):[^@/]*@", r"\1:***@", url)


class JobsSettings(BaseSettings):
    """Settings read from the environment (and `.env` is not read: pass values explicitly)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    backend: str = Field(default="inline", validation_alias=AliasChoices("JOBS_BACKEND", "backend"))
    broker_url: str = Field(
        default="redis://localhost:6379/0",
        validation_alias=AliasChoices("JOBS_BROKER_URL", "broker_url"),
        repr=False,
    )
    queue: str = Field(default="default", validation_alias=AliasChoices("JOBS_QUEUE", "queue"))
    dispatch_timeout: float = Field(
        default=DEFAULT_DISPATCH_TIMEOUT,
        gt=0,
        validation_alias=AliasChoices("JOBS_DISPATCH_TIMEOUT", "dispatch_timeout"),
    )
    max_payload_bytes: int = Field(
        default=DEFAULT_MAX_PAYLOAD_BYTES,
        ge=0,
        validation_alias=AliasChoices("JOBS_MAX_PAYLOAD_BYTES", "max_payload_bytes"),
    )
    celery_transport: str = Field(
        default="kombu",
        validation_alias=AliasChoices("JOBS_CELERY_TRANSPORT", "celery_transport"),
    )
    """The Redis transport of Celery workers: `kombu` (kombu's own) or `reliable-redis` (the
    opt-in `jobs-core[celery-reliable-redis]`). RabbitMQ needs neither."""
    idempotency_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("JOBS_IDEMPOTENCY_URL", "idempotency_url"),
        repr=False,
    )
    """Redis where Celery and Dramatiq producers keep idempotency keys (default: the broker,
    when it is Redis; on RabbitMQ without it, keys are kept in each process only)."""
    registry: str | None = Field(
        default=None, validation_alias=AliasChoices("JOBS_REGISTRY", "registry")
    )
    """The registry a worker runs, as `module:attribute` (the command line sets it from its
    argument; a backend whose worker is another process imports it from there)."""
    context: str | None = Field(
        default=None, validation_alias=AliasChoices("JOBS_CONTEXT", "context")
    )
    """The context (or context factory) a worker's runs get, as `module:attribute`."""
    flow_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("JOBS_FLOW_URL", "flow_url"),
        repr=False,
    )
    """Redis for the concurrency and throttle limits of Celery and Dramatiq workers (default:
    the broker, when it is Redis)."""
    flow_lease: float = Field(
        default=30.0, gt=0, validation_alias=AliasChoices("JOBS_FLOW_LEASE", "flow_lease")
    )
    """Seconds a worker that died keeps its concurrency slots at most (renewed every third)."""
    step_store_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("JOBS_STEP_STORE_URL", "step_store_url"),
        repr=False,
    )
    """Where Celery and Dramatiq workers keep the steps of runs with steps: `redis://...`, a
    SQLAlchemy database URL (`postgresql://...`, `sqlite:///...`), or `django` (the Django
    app's database). Default: the broker, when it is Redis."""
    step_retention: timedelta = Field(
        default=timedelta(days=7),
        ge=timedelta(0),
        validation_alias=AliasChoices("JOBS_STEP_RETENTION", "step_retention"),
    )
    """How long a finished run's step records are kept (seconds, or ISO 8601 such as P7D)."""
    inngest_app_name: str = Field(
        default="jobs-app", validation_alias=AliasChoices("INNGEST_APP_NAME", "inngest_app_name")
    )
    inngest_max_delay: timedelta = Field(
        default=timedelta(days=7),
        gt=timedelta(0),
        validation_alias=AliasChoices("INNGEST_MAX_DELAY", "inngest_max_delay"),
        description="Longest delay= / run_at= Inngest keeps a job waiting: 7 days on the Free "
        "plan, a year on paid plans (seconds, or ISO 8601 such as P365D).",
    )

    @field_validator("inngest_max_delay", "step_retention", mode="before")
    @classmethod
    def _seconds_as_duration(cls, value: Any) -> Any:
        # An environment variable arrives as text: '604800' means seconds, as a number would.
        if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            return float(value)
        return value

    @field_validator("backend")
    @classmethod
    def _normalise_backend(cls, value: str) -> str:
        # Built-in names ignore case and spaces ('Celery ' is 'celery'); a
        # 'package.module:factory' path keeps its case, as Python names are case-sensitive.
        value = value.strip()
        return value if ":" in value else value.lower()

    def dispatcher_options(self, **options: Any) -> dict[str, Any]:
        """`options` for a dispatcher, with the timeout and payload limit of these settings
        unless given: what every backend's `create_dispatcher` passes on."""
        options.setdefault("timeout", self.dispatch_timeout)
        options.setdefault("max_payload_bytes", self.max_payload_bytes)
        return options

    @property
    def redacted_broker_url(self) -> str:
        return redact_url(self.broker_url)

    def __repr_args__(self) -> Any:
        yield from super().__repr_args__()
        yield "broker_url", self.redacted_broker_url


OTHER_VARIABLES: dict[str, str] = {
    "JOBS_DATABASE_URL": "the outbox relay's database (`python -m jobs_core relay`)",
    "JOBS_DRAMATIQ_HEARTBEAT_TIMEOUT": "set by the Dramatiq worker command for its processes",
    "JOBS_DRAMATIQ_MAINTENANCE_CHANCE": "set by the Dramatiq worker command for its processes",
    "JOBS_TEST_POSTGRES_URL": "the PostgreSQL of jobs_core's own test suite",
    "JOBS_TEST_POSTGRES_BIN": "the PostgreSQL binaries of jobs_core's own test suite",
}
"""The `JOBS_*` variables jobs_core reads besides the `JobsSettings` fields."""

SIMILAR_ENOUGH = 0.8
"""How close a `JOB_*` name must be to a known one to be taken for a typo of it: `JOB_` is also
the prefix of other tools' variables (Jenkins sets JOB_NAME and JOB_URL), which are left alone."""


def known_variables() -> list[str]:
    """Every `JOBS_*` environment variable jobs_core knows: the env name of each `JobsSettings`
    field, and `OTHER_VARIABLES`."""
    names = set(OTHER_VARIABLES)
    for field in JobsSettings.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names.update(c for c in choices if isinstance(c, str) and c.startswith("JOBS_"))
    return sorted(names)


_warned: set[str] = set()
_warned_lock = threading.Lock()


def check_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warn (once per process and name) about each `JOBS_*` or `JOB_*` environment variable
    jobs_core does not know, naming the nearest known one: a typo of a variable's name (a
    missing S, a missing _URL) must not silently leave the default in place. Returns the
    warnings given."""
    known = known_variables()
    given: list[str] = []
    for name in sorted(os.environ if environ is None else environ):
        upper = name.upper()  # pydantic-settings reads the variables whatever their case
        if not upper.startswith(("JOBS_", "JOB_")) or upper in known:
            continue
        cutoff = 0.0 if upper.startswith("JOBS_") else SIMILAR_ENOUGH
        nearest = difflib.get_close_matches(upper, known, n=1, cutoff=cutoff)
        if not nearest:
            continue
        with _warned_lock:
            if name in _warned:
                continue
            _warned.add(name)
        warning = (
            f"environment variable {name} is not one jobs_core reads, and is ignored: did you "
            f"mean {nearest[0]}? (every setting: docs/configuration.md)"
        )
        logger.warning(warning)
        given.append(warning)
    return given


def load_settings(**overrides: Any) -> JobsSettings:
    """Read `JobsSettings` from the environment; a bad value is a `JobConfigError` naming it.

    An unknown `JOBS_*` variable (a typo of a known one) is logged as a warning, once."""
    check_environment()
    try:
        return JobsSettings(**overrides)
    except Exception as exc:  # pydantic ValidationError, without echoing secrets
        errors = getattr(exc, "errors", None)
        detail = (
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in errors(include_input=False)
            )
            if callable(errors)
            else str(exc)
        )
        raise JobConfigError(f"invalid jobs settings: {detail}") from None


def import_string(target: str, what: str = "object") -> Any:
    """Import `package.module:attribute`; errors are `JobConfigError`s that say what to fix."""
    if not _FACTORY_PATTERN.match(target):
        raise JobConfigError(f"{what} must look like 'package.module:name', got {target!r}")
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise JobConfigError(f"cannot import module {module_name!r} for {what}: {exc}") from exc
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise JobConfigError(f"module {module_name!r} has no {attr_path!r} ({what})") from None
    return obj


def load_registry(target: str) -> Any:
    """Import the `JobRegistry` at `module:attribute`; anything else is a `JobConfigError`."""
    from .jobs.registry import JobRegistry

    registry = import_string(target, "APP:REGISTRY")
    if not isinstance(registry, JobRegistry):
        raise JobConfigError(f"{target} is a {type(registry).__name__}, not a JobRegistry")
    return registry


def load_context(target: str | None) -> Any:
    """Import the context (or context factory) at `module:attribute`, or None."""
    return import_string(target, "--context") if target else None
