"""The Celery worker entry point of `jobs-core worker` (JOBS_BACKEND=celery): the app made by
`create_celery_app`, run in the foreground, logging one line per job event (jobs_core's), at a
level a production worker can afford."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from celery.app import trace

from jobs_core.config import JobsSettings
from jobs_core.instrumentation import LOGGED_OUTCOMES
from jobs_core.jobs.registry import JobRegistry
from jobs_core.worker import ContextSource

from .app import create_celery_app

PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")
"""The loggers of Celery's own line per task: received, succeeded, retry, raised."""


class TaskLines(logging.Filter):
    """Drops Celery's own line about a job's run where jobs_core writes one for the same event:
    "received" and "succeeded" (jobs_core's `started` and `completed`, DEBUG), "retry" and
    "raised unexpected" of a run jobs_core logged as `retrying` or `failed`. A failure jobs_core
    did not log (a broker error while sending a retry, say) keeps Celery's line. So a deferred
    run is not "succeeded" twice, and a `PermanentError` is one ERROR line, without a traceback
    of the worker's own frames."""

    RECEIVED = trace.LOG_RECEIVED.strip()
    SUCCEEDED = trace.LOG_SUCCESS.strip()
    RETRIED = trace.LOG_RETRY.strip()
    RAISED = trace.LOG_FAILURE.strip()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if message in (self.RECEIVED, self.SUCCEEDED):
            return False
        data = getattr(record, "data", None)
        task_id = data.get("id") if isinstance(data, dict) else None
        if message == self.RETRIED:
            return not LOGGED_OUTCOMES.logged("retrying", task_id)
        if message == self.RAISED and isinstance(data, dict) and not data.get("internal"):
            return not LOGGED_OUTCOMES.logged("failed", task_id)
        return True


TASK_LINES = TaskLines()


def quiet_task_logs() -> None:
    """Leave jobs_core's lines as the record of each job's run in this Celery worker process:
    Celery's own line per task is dropped where jobs_core writes one (`TaskLines`). `jobs-core
    worker` does it; a worker started with `celery -A myapp.worker:celery_app worker` calls it
    in that module. Idempotent."""
    for name in PER_TASK_LOGGERS:
        log = logging.getLogger(name)
        if TASK_LINES not in log.filters:
            log.addFilter(TASK_LINES)


def run_worker(
    registry: JobRegistry[Any],
    *,
    context: ContextSource,
    settings: JobsSettings,
    argv: list[str],
) -> int:
    """Run a Celery worker for `registry` in the foreground; `argv` goes to `celery worker`.

    Besides Celery's own options: `--visibility-timeout SECONDS` (Redis: how long an
    unacknowledged message stays with its worker), `--restore-interval SECONDS` (Redis: how
    often kombu gives back messages older than that), and `--transport kombu|reliable-redis`.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--visibility-timeout", type=float)
    parser.add_argument("--restore-interval", type=float)
    parser.add_argument("--transport")
    ours, argv = parser.parse_known_args(argv)
    transport: dict[str, Any] = {}
    if ours.restore_interval is not None:
        transport.update(unacked_restore_interval=ours.restore_interval, unacked_restore_throttle=1)
    app = create_celery_app(
        registry,
        context=context,
        broker_url=settings.broker_url,
        queue=settings.queue,
        visibility_timeout=ours.visibility_timeout,
        transport=ours.transport or settings.celery_transport,
        broker_transport_options=transport,
    )
    if not any(a == "-l" or a.startswith("--loglevel") for a in argv):
        # INFO for the worker's own news; at INFO a job that went well writes no line (a
        # production worker pays for every line), a retry one WARNING, a give-up one ERROR.
        argv = ["--loglevel", "INFO", *argv]
    quiet_task_logs()  # at any level: jobs_core's lines are the record of each run
    try:
        app.worker_main(argv=["worker", *argv])
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
