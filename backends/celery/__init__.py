"""The Celery backend: each job is a Celery task named after it, run through the core's worker.

Producers: `CeleryDispatcher(broker_url, queue)` (or `create_dispatcher()` with
`JOBS_BACKEND=celery`). Workers: `create_celery_app(registry, context=...)` and
`celery -A module:app worker`, or `python -m jobs_core worker`. RabbitMQ (`amqp://`) is the
zero-loss broker (quorum queues, publisher confirms, a dead-letter queue); Redis runs on kombu's
own transport, or on the opt-in reliable one (`JOBS_CELERY_TRANSPORT=reliable-redis`).
"""

from __future__ import annotations

from jobs_core.backend import missing_extra

try:
    import celery as _celery  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the C24 test
    raise missing_extra("celery", "celery", getattr(exc, "name", None) or "celery") from exc

from .app import create_celery_app
from .broker import dead_letter_queue
from .dispatcher import CeleryDispatcher, create_dispatcher
from .worker import run_worker

__all__ = [
    "CeleryDispatcher",
    "create_celery_app",
    "create_dispatcher",
    "dead_letter_queue",
    "run_worker",
]
