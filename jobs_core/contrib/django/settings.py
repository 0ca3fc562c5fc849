"""`settings.JOBS` read into `JobsSettings`, and the dispatcher it configures.

```python
JOBS = {
    "BACKEND": "dramatiq",                    # JOBS_BACKEND
    "BROKER_URL": "redis://localhost:6379/0", # JOBS_BROKER_URL
    "QUEUE": "default",                       # JOBS_QUEUE
    "REGISTRY": "myapp.jobs:jobs",            # the app's JobRegistry, for the commands
    "CONTEXT": "myapp.jobs:create_context",   # a ctx object or factory, for the worker
}
```

Keys are the `JobsSettings` fields in capitals (`DISPATCH_TIMEOUT`, `MAX_PAYLOAD_BYTES`,
`INNGEST_APP_NAME` too); a key left out falls back to its environment variable, then its
default. An unknown key is an error, not ignored.
"""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from jobs_core import JobDispatcherPort, JobRegistry, JobsSettings, create_dispatcher
from jobs_core.config import import_string, load_settings

DJANGO_ONLY_KEYS = {"REGISTRY", "CONTEXT"}


def _jobs() -> dict[str, Any]:
    jobs = getattr(settings, "JOBS", {}) or {}
    if not isinstance(jobs, dict):
        raise ImproperlyConfigured("settings.JOBS must be a dict")
    return {str(k).upper(): v for k, v in jobs.items()}


def jobs_settings() -> JobsSettings:
    """`JobsSettings` from `settings.JOBS`, then the environment, then the defaults."""
    fields = set(JobsSettings.model_fields)
    values: dict[str, Any] = {}
    for key, value in _jobs().items():
        if key in DJANGO_ONLY_KEYS:
            continue
        if key.lower() not in fields:
            known = ", ".join(sorted({f.upper() for f in fields} | DJANGO_ONLY_KEYS))
            raise ImproperlyConfigured(f"settings.JOBS has an unknown key {key!r} (known: {known})")
        values[key.lower()] = value
    return load_settings(**values)


def jobs_registry(target: str | None = None) -> JobRegistry[Any]:
    """The app's registry: `target` (`module:attribute`), else `settings.JOBS["REGISTRY"]`."""
    target = target or _jobs().get("REGISTRY")
    if not target:
        raise ImproperlyConfigured(
            'name your JobRegistry in settings.JOBS["REGISTRY"] ("myapp.jobs:jobs")'
        )
    registry = import_string(target, 'JOBS["REGISTRY"]')
    if not isinstance(registry, JobRegistry):
        raise ImproperlyConfigured(f"{target} is a {type(registry).__name__}, not a JobRegistry")
    return registry


def jobs_context() -> Any:
    """`settings.JOBS["CONTEXT"]` imported (a ctx object or a factory), or None."""
    target = _jobs().get("CONTEXT")
    return import_string(target, 'JOBS["CONTEXT"]') if target else None


@functools.lru_cache(maxsize=1)
def get_dispatcher() -> JobDispatcherPort:
    """The configured backend's dispatcher, made once per process (thread-safe to share)."""
    return create_dispatcher(jobs_context(), settings=jobs_settings())


@receiver(setting_changed)
def _forget_dispatcher(*, setting: str, **kwargs: Any) -> None:
    if setting == "JOBS":
        get_dispatcher.cache_clear()
