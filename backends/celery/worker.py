"""The Celery worker entry point of `python -m jobs_core worker` (JOBS_BACKEND=celery): the app
made by `create_celery_app`, run in the foreground, with log levels a production worker can
afford."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from celery import signals

from jobs_core.config import JobsSettings
from jobs_core.jobs.registry import JobRegistry
from jobs_core.worker import ContextSource

from .app import create_celery_app

PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


def _quiet_task_lines(**_: Any) -> None:
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


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
        # INFO for the worker's own news, but not Celery's two lines per task (received,
        # succeeded): a production worker pays for every line, and they say nothing to act on.
        argv = ["--loglevel", "INFO", *argv]
        app.jobs_core_quiet_tasks = _quiet_task_lines
        signals.after_setup_logger.connect(_quiet_task_lines, weak=True)
    try:
        app.worker_main(argv=["worker", *argv])
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
