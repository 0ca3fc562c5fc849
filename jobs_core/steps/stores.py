"""Which `StepStore` a Celery or Dramatiq worker keeps its runs' steps in (DESIGN "Durable
steps"): `JOBS_STEP_STORE_URL` when set, else the broker's Redis; a worker with a job that has
steps and nowhere to keep them is refused when it is built (C28)."""

from __future__ import annotations

from typing import Any

from ..config import load_settings, redact_url
from ..dispatch.idempotency import is_redis_url, redis_client
from ..errors import JobConfigError
from ..jobs.registry import JobRegistry
from .redis_store import KEY_PREFIX, RedisStepStore
from .store import StepStore
from .waits import RedisWaits

DJANGO = "django"
"""`JOBS_STEP_STORE_URL=django`: the Django app's database (`jobs_core.contrib.django`)."""


def step_store_for(
    registry: JobRegistry[Any], backend: str, *, broker_url: str | None, client: Any = None
) -> StepStore | None:
    """The store for a worker of `registry`, or None when no job of it has steps. `client` is
    the broker's redis-py client, shared when the steps live on the broker's Redis."""
    with_steps = [job.name for job in registry if job.takes_steps]
    if not with_steps:
        return None
    settings = load_settings()
    url = settings.step_store_url
    if url is None:
        if client is not None:
            return RedisStepStore(client)
        if broker_url is not None and is_redis_url(broker_url):
            return RedisStepStore(redis_client(broker_url, settings.dispatch_timeout))
        raise JobConfigError(
            f"job(s) {', '.join(map(repr, with_steps))} have steps, and the {backend} worker "
            f"has nowhere to keep them: its broker {redact_url(broker_url or '')!r} is not Redis. "
            "Set JOBS_STEP_STORE_URL to redis://..., a database URL (postgresql://..., "
            "sqlite:///...), or 'django'"
        )
    return step_store_at(url, timeout=settings.dispatch_timeout)


def step_store_at(url: str, *, timeout: float = 10.0) -> StepStore:
    """The store at `url`: Redis, `django`, or a SQLAlchemy database (its table created if it
    does not exist)."""
    if is_redis_url(url):
        return RedisStepStore(redis_client(url, timeout))
    if url == DJANGO:
        from ..contrib.django.steps import DjangoStepStore

        return DjangoStepStore()
    try:
        from sqlalchemy import create_engine
        from sqlalchemy.exc import ArgumentError
    except ImportError:  # pragma: no cover - depends on the extras installed
        raise JobConfigError(
            f"JOBS_STEP_STORE_URL {redact_url(url)!r} is a database URL: install "
            "'jobs-core[sqlalchemy]'"
        ) from None
    from .sql_store import SqlStepStore

    try:
        engine = create_engine(url)
    except (ArgumentError, ImportError) as error:
        raise JobConfigError(
            f"JOBS_STEP_STORE_URL {redact_url(url)!r} is neither redis://..., 'django', nor a "
            f"database URL SQLAlchemy can open: {error}"
        ) from None
    if engine.dialect.is_async:
        raise JobConfigError(
            f"JOBS_STEP_STORE_URL {redact_url(url)!r} names an async driver: workers keep steps "
            "through a sync one (postgresql+psycopg://..., not +asyncpg)"
        )
    store = SqlStepStore(engine)
    store.create_table()
    return store


def waits_for_producer(broker_url: str, client: Any = None) -> RedisWaits | None:
    """Where a Celery or Dramatiq producer finds the runs waiting for the events it sends: the
    Redis step store (`JOBS_STEP_STORE_URL`, else the broker's Redis; `client`, the producer's
    own client for it, is shared). None where steps are kept elsewhere (a database keeps no
    waits)."""
    settings = load_settings()
    url = settings.step_store_url
    if url is not None:
        return (
            RedisWaits(redis_client(url, settings.dispatch_timeout), KEY_PREFIX)
            if is_redis_url(url)
            else None
        )
    if not is_redis_url(broker_url):
        return None
    client = client if client is not None else redis_client(broker_url, settings.dispatch_timeout)
    return RedisWaits(client, KEY_PREFIX)
