"""The Celery app of a worker that a test runs inside its own process (`start_worker`)."""

from __future__ import annotations

from typing import Any

from jobs_core import JobRegistry
from jobs_core.backends.celery import create_celery_app
from jobs_core.instrumentation import Instrumentation


def embedded_worker_app(
    registry: JobRegistry[Any],
    url: str,
    queue: str,
    instrumentation: Instrumentation,
    *,
    context: Any = None,
    **celery_conf: Any,
) -> Any:
    """`create_celery_app`, as production makes it, for a worker embedded in the test process:
    it leaves the test's logging alone (no root-logger hijack) and runs no remote control or
    task events, which an embedded worker does not need and would have to stop."""
    return create_celery_app(
        registry,
        context=context,
        broker_url=url,
        queue=queue,
        instrumentation=instrumentation,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        **celery_conf,
    )
