"""Configuration from the environment, and `create_dispatcher()` which picks the backend (C24)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .dispatch.dispatcher import DEFAULT_DISPATCH_TIMEOUT
from .dispatch.port import JobDispatcherPort
from .errors import JobConfigError
from .instrumentation import Instrumentation
from .jobs.payload import DEFAULT_MAX_PAYLOAD_BYTES
from .worker import ContextSource

BUILTIN_BACKENDS: dict[str, tuple[str, str]] = {
    # name: (adapter module, extra that installs its library)
    "inline": ("jobs_core.backends.inline", ""),
    "inngest": ("jobs_core.backends.inngest", "inngest"),
    "celery": ("jobs_core.backends.celery", "celery"),
    "dramatiq": ("jobs_core.backends.dramatiq", "dramatiq"),
}
BACKEND_LIBRARIES: dict[str, tuple[str, ...]] = {
    "inngest": ("inngest", "httpx"),
    "celery": ("celery", "kombu", "redis"),
    "dramatiq": ("dramatiq", "redis"),
}
_FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


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

    @field_validator("inngest_max_delay", mode="before")
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


def load_settings(**overrides: Any) -> JobsSettings:
    """Read `JobsSettings` from the environment; a bad value is a `JobConfigError` naming it."""
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


def import_backend(name: str) -> Any:
    """The adapter module of a built-in backend; a missing extra is a `JobConfigError` (C24)."""
    if name not in BUILTIN_BACKENDS:
        raise unknown_backend(name)
    module_name, extra = BUILTIN_BACKENDS[name]
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        libraries = BACKEND_LIBRARIES.get(name, ())
        if extra and (missing.split(".")[0] in libraries or not missing):
            raise missing_extra(name, extra, missing or str(exc)) from exc
        raise


def missing_extra(backend: str, extra: str, missing: str) -> JobConfigError:
    return JobConfigError(
        f"the {backend!r} backend needs the {extra!r} extra ({missing} is not installed): "
        f"pip install 'jobs-core[{extra}]'"
    )


def unknown_backend(name: str) -> JobConfigError:
    valid = ", ".join(BUILTIN_BACKENDS)
    return JobConfigError(
        f"unknown JOBS_BACKEND {name!r}: use one of {valid}, "
        "or 'package.module:factory' for a third-party adapter"
    )


def resolve_backend_factory(name: str) -> Callable[..., JobDispatcherPort]:
    """The dispatcher factory for `name`: a built-in backend or a `module:factory` string."""
    if name in BUILTIN_BACKENDS:
        factory: Callable[..., JobDispatcherPort] = import_backend(name).create_dispatcher
        return factory
    if ":" in name:
        target = import_string(name, "JOBS_BACKEND")
        if not callable(target):
            raise JobConfigError(f"JOBS_BACKEND {name!r} does not name a callable factory")
        return target  # type: ignore[no-any-return]
    raise unknown_backend(name)


D_co = TypeVar("D_co", bound=JobDispatcherPort, covariant=True)


class DispatcherFactory(Protocol[D_co]):
    """A backend's `create_dispatcher`: what `create_dispatcher()` calls with the settings."""

    def __call__(
        self, settings: JobsSettings, *, context: ContextSource = None, **options: Any
    ) -> D_co: ...


def broker_dispatcher_factory(
    dispatcher: Callable[..., D_co], backend: str
) -> DispatcherFactory[D_co]:
    """The `create_dispatcher` of a backend whose dispatcher is made as
    `dispatcher(broker_url, queue, **options)` (Celery, Dramatiq): one home for how the settings
    become such a dispatcher, so that the adapters cannot drift apart. `context` is ignored, as
    the producer side of a broker runs no job."""

    def create_dispatcher(
        settings: JobsSettings, *, context: ContextSource = None, **options: Any
    ) -> D_co:
        options = settings.dispatcher_options(**options)
        return dispatcher(settings.broker_url, settings.queue, **options)

    create_dispatcher.__doc__ = (
        f"The `JOBS_BACKEND={backend}` factory used by `jobs_core.create_dispatcher`."
    )
    return create_dispatcher


def create_dispatcher(
    context: ContextSource = None,
    *,
    settings: JobsSettings | None = None,
    instrumentation: Instrumentation | None = None,
    **options: Any,
) -> JobDispatcherPort:
    """The dispatcher for the configured backend (`JOBS_BACKEND`, default `inline`).

    `context` is what the inline backend runs jobs with (a ctx object or a sync or async
    factory); durable backends ignore it on the producer side. A third-party factory is called
    as `factory(settings, context=..., instrumentation=..., **options)`.
    """
    settings = settings or load_settings()
    factory = resolve_backend_factory(settings.backend)
    return factory(settings, context=context, instrumentation=instrumentation, **options)
