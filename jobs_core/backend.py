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
import importlib.util
import logging
import os
import threading
import types
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Protocol, TypeVar, Union, cast, get_args, get_origin

from .config import (
    JobsSettings,
    check_environment,
    import_string,
    load_settings,
    redact_url,
)
from .dispatch.port import JobDispatcherPort
from .errors import JobConfigError
from .instrumentation import Instrumentation
from .jobs.registry import JobRegistry
from .worker import ContextSource

logger = logging.getLogger("jobs_core.backend")

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
    if settings is None:
        settings = load_settings()
    else:
        check_environment()  # the fields it leaves out still come from the environment
    factory = dispatcher_factory(settings.backend)
    dispatcher = factory(settings, context=context, instrumentation=instrumentation, **options)
    announce(settings, "dispatcher")
    return dispatcher


# -- saying what was chosen -------------------------------------------------------------------

_announced: set[str] = set()
_announced_lock = threading.Lock()


def _source(
    settings: JobsSettings,
    field: str,
    variable: str,
    environ: Mapping[str, str],
    given: Mapping[str, str],
) -> str:
    """Where a setting's value came from, for the log line that names it."""
    if field in given:
        return given[field]
    if any(name.upper() == variable for name in environ):
        return variable
    if field in settings.model_fields_set:
        return "set in code"
    return f"the default: {variable} is not set"


def describe_backend(
    settings: JobsSettings,
    what: str = "dispatcher",
    environ: Mapping[str, str] | None = None,
    given: Mapping[str, str] | None = None,
) -> str:
    """One line saying which backend `what` (a dispatcher, a worker...) runs on and where its
    broker is, and where each came from (a variable, code, the default, or as `given`, such as
    `{"backend": "--backend"}`): the line `announce` logs. A URL's password is `***` (C23)."""
    env = os.environ if environ is None else environ
    given = given or {}
    backend = settings.backend
    source = _source(settings, "backend", "JOBS_BACKEND", env, given)
    line = f"jobs_core {what}: backend {backend} ({source})"
    if backend == "inline":
        return f"{line}: jobs run inside dispatch, in this process, with no broker"
    if backend in ("celery", "dramatiq"):
        broker = _source(settings, "broker_url", "JOBS_BROKER_URL", env, given)
        return f"{line}, broker {settings.redacted_broker_url} ({broker}), queue {settings.queue!r}"
    if backend == "inngest":
        dev = env.get("INNGEST_DEV", "").strip().lower() not in ("", "0", "false")
        server = env.get("INNGEST_EVENT_API_BASE_URL") or env.get("INNGEST_BASE_URL")
        where = redact_url(server) if server else ("the Dev Server" if dev else "Inngest Cloud")
        mode = "dev mode (INNGEST_DEV)" if dev else "production mode"
        return f"{line}, app {settings.inngest_app_name!r}, {mode}, events to {where}"
    return line


def announce(settings: JobsSettings, what: str, given: Mapping[str, str] | None = None) -> None:
    """Log at INFO, once per process, which backend `what` runs on (`describe_backend`): a
    misconfiguration (a typo that leaves the inline default, a broker left at its default)
    shows in the first lines a process writes."""
    line = describe_backend(settings, what, given=given)
    with _announced_lock:
        if line in _announced:
            return
        _announced.add(line)
    logger.info(line)


# -- the context a worker's runs get ----------------------------------------------------------


def context_type(registry: JobRegistry[Any]) -> Any:
    """The context type a registry was declared with: `AppContext` for
    `JobRegistry[AppContext]()` (Python keeps the subscripted class on the instance, as
    `__orig_class__`) or for a subclass of `JobRegistry[AppContext]`; `Any` for `JobRegistry()`."""
    declared = getattr(registry, "__orig_class__", None)
    candidates = [declared] if declared is not None else []
    for klass in type(registry).__mro__:
        candidates.extend(getattr(klass, "__orig_bases__", ()))
    for candidate in candidates:
        origin = get_origin(candidate)
        if isinstance(origin, type) and issubclass(origin, JobRegistry):
            arguments = get_args(candidate)
            if arguments:
                return arguments[0]
    return Any


def _accepts_none(declared: Any) -> bool:
    """Whether a context of type `declared` may be None (Any, None, object, Optional, a TypeVar)."""
    if declared in (Any, None, type(None), object) or isinstance(declared, TypeVar):
        return True
    origin = get_origin(declared)
    if origin is Annotated:
        return _accepts_none(get_args(declared)[0])
    if origin is Union or origin is types.UnionType:
        return any(_accepts_none(argument) for argument in get_args(declared))
    return False


def needs_context(registry: JobRegistry[Any]) -> bool:
    """Whether runs of `registry`'s jobs need a context: the registry declares a context type
    that is not optional (`JobRegistry[AppContext]`) and at least one job takes one
    (`handler(payload, ctx)`). `JobRegistry()` takes any context, None included."""
    if _accepts_none(context_type(registry)):
        return False
    return any(job.takes_context for job in registry)


def require_context(registry: JobRegistry[Any], context: ContextSource, how: str) -> None:
    """Refuse a worker with no context for a registry whose jobs need one (`needs_context`):
    every run would get `ctx=None`, fail, and be retried until it gave up. `how` names the
    option that gives it (`--context MODULE:FACTORY`, `context=`)."""
    if context is not None or not needs_context(registry):
        return
    declared = context_type(registry)
    name = getattr(declared, "__name__", None) or repr(declared)
    takers = [job.name for job in registry if job.takes_context]
    shown = ", ".join(takers[:3]) + (f" and {len(takers) - 3} more" if len(takers) > 3 else "")
    raise JobConfigError(
        f"the registry is a JobRegistry[{name}] and its jobs take a context ({shown}), but "
        f"the worker was given none: every run would get ctx=None. Pass {how}: a {name}, or "
        "a sync or async factory that makes one for each run"
    )
