"""The plain Celery app of the worker rows: what a user writes without jobs_core.

`celery -A benchmarks.plain_celery:app worker --pool threads --concurrency 8` runs it (the
benchmark starts it so, with Celery's default logging). The app has the settings that keep a
job from being lost (`task_acks_late`, `task_reject_on_worker_lost`, prefetch 1: with Celery's
defaults a SIGKILL lost the job, see BACKEND_NOTES.md), which jobs_core's worker sets too, so
the rows compare what jobs_core adds, not a different delivery guarantee. Broker and queue come
from `BENCH_BROKER_URL` and `BENCH_QUEUE`; the counter from `BENCH_COUNTER`.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from .jobs import COUNTER, JOB_NAME, plain_body

CONF: dict[str, Any] = {
    "task_serializer": "json",
    "accept_content": ["json"],
    "task_ignore_result": True,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_connection_retry_on_startup": True,
}


def make_app(broker_url: str, queue: str) -> Any:
    """A plain Celery app for `broker_url` whose tasks go to `queue` by default."""
    app = Celery("bench.plain", broker=broker_url, set_as_current=False)
    app.conf.update(CONF, task_default_queue=queue)
    return app


app = make_app(
    os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("BENCH_QUEUE", "celery"),
)


@app.task(name=JOB_NAME)
def noop(data: Any) -> None:
    plain_body(data, COUNTER)
