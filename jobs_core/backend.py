"""What a backend is, and how one is chosen (C24).

A backend is a module (`jobs_core.backends.<name>`, or `package.module` of a third party) with
two functions of one shape each, so that the core, its command line and the framework
integrations load any backend the same way:

- `create_dispatcher(settings, *, context=None, instrumentation=None, **options)`: the producer
  side, a `JobDispatcherPort` (`jobs_core.create_dispatcher` calls it);
- `run_worker(registry, *, context, settings, argv) -> int`: runs the backend's worker for
  `registry` in the foreground until it is stopped (`python -m jobs_core worker` calls it);
  `argv` holds the options the command line did not know, for the backend's own worker.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from .config import JobsSettings, import_string, load_settings
from .dispatch.port import JobDispatcherPort
from .errors import JobConfigError
from .instrumentation import Instrumentation
from .jobs.registry import JobRegistry
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


class Backend(Protocol):
    """The two functions every backend module offers (see the module docstring)."""

    def create_dispatcher(
        self,
        settings: JobsSettings,
        *,
        context: ContextSource = None,
        instrumentation: Instrumentation | None = None,
        **options: Any,
    ) -> JobDispatcherPort: ...

    def run_worker(
        self,
        registry: JobRegistry[Any],
        *,
        context: ContextSource,
        settings: JobsSettings,
        argv: list[str],
    ) -> int: ...


def load_backend(name: str) -> Backend:
    """The module of the built-in backend `name`; an unknown name or a missing extra is a
    `JobConfigError` that says what to do (C24)."""
    if name not in BUILTIN_BACKENDS:
        raise unknown_backend(name)
    module_name, extra = BUILTIN_BACKENDS[name]
    try:
        return cast(Backend, importlib.import_module(module_name))
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


def dispatcher_factory(name: str) -> Callable[..., JobDispatcherPort]:
    """The dispatcher factory for `name`: a built-in backend's, or a `module:factory` string."""
    if name in BUILTIN_BACKENDS:
        return load_backend(name).create_dispatcher
    if ":" in name:
        target = import_string(name, "JOBS_BACKEND")
        if not callable(target):
            raise JobConfigError(f"JOBS_BACKEND {name!r} does not name a callable factory")
        return cast(Callable[..., JobDispatcherPort], target)
    raise unknown_backend(name)


D_co = TypeVar("D_co", bound=JobDispatcherPort, covariant=True)


class DispatcherFactory(Protocol[D_co]):
    """A backend's `create_dispatcher`: what `create_dispatcher()` calls with the settings."""

    def __call__(
        self,
        settings: JobsSettings,
        *,
        context: ContextSource = None,
        instrumentation: Instrumentation | None = None,
        **options: Any,
    ) -> D_co: ...


def broker_dispatcher_factory(
    dispatcher: Callable[..., D_co], backend: str
) -> DispatcherFactory[D_co]:
    """The `create_dispatcher` of a backend whose dispatcher is made as
    `dispatcher(broker_url, queue, **options)` (Celery, Dramatiq): one home for how the settings
    become such a dispatcher, so that the adapters cannot drift apart. `context` is ignored, as
    the producer side of a broker runs no job."""

    def create_dispatcher(
        settings: JobsSettings,
        *,
        context: ContextSource = None,
        instrumentation: Instrumentation | None = None,
        **options: Any,
    ) -> D_co:
        options = settings.dispatcher_options(instrumentation=instrumentation, **options)
        if settings.idempotency_url and "idempotency" not in options:
            options.setdefault("idempotency_url", settings.idempotency_url)
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
    factory = dispatcher_factory(settings.backend)
    return factory(settings, context=context, instrumentation=instrumentation, **options)
