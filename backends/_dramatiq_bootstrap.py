"""The module `python -m jobs_core worker` hands to the `dramatiq` command: it builds the worker
broker, with one actor per job of the registry named in `JOBS_DRAMATIQ_REGISTRY`."""

from __future__ import annotations

import os

if os.environ.get("DJANGO_SETTINGS_MODULE"):  # a Django project's jobs may use its models
    import django

    django.setup()

from jobs_core.__main__ import load_context, load_registry
from jobs_core.config import load_settings

from .dramatiq import logger, register_actors

_registry = load_registry(os.environ["JOBS_DRAMATIQ_REGISTRY"])
_settings = load_settings()
broker = register_actors(
    _registry,
    context=load_context(os.environ.get("JOBS_DRAMATIQ_CONTEXT") or None),
    heartbeat_timeout=int(os.environ["JOBS_DRAMATIQ_HEARTBEAT_TIMEOUT"]),
    maintenance_chance=int(os.environ["JOBS_DRAMATIQ_MAINTENANCE_CHANCE"]),
)
logger.info(
    "jobs_core: %d job(s) on queue %r at %s",
    len(_registry),
    _settings.queue,
    _settings.redacted_broker_url,
)
