"""Item 7: a worker's log lines follow the contract's events, one line per event, whatever its
library prints: a `PermanentError` is one ERROR line (jobs_core's), not Celery's "raised
unexpected" with a traceback, and a run deferred by a concurrency limit is not "succeeded"
twice."""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobs_core.instrumentation import LOGGED_OUTCOMES, JobEvent, LoggingInstrumentation
from tests.newuser.processes import environment, process, wait_for

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(180)


def test_a_celery_worker_writes_one_line_per_event(tmp_path: Path, redis_server: Any) -> None:
    from jobs_core.backends.celery import CeleryDispatcher
    from tests.newuser.log_app import gives_up, limited, retries_once

    queue = f"logs-{uuid.uuid4().hex}"
    store = redis_server.client(1)
    env = environment(
        JOBS_BROKER_URL=redis_server.url,
        JOBS_QUEUE=queue,
        NEWUSER_STORE_URL=redis_server.url_for_db(1),
    )
    log = tmp_path / "worker.log"
    command = [
        *(sys.executable, "-m", "jobs_core", "worker", "tests.newuser.log_app:jobs"),
        *("--backend", "celery", "--"),
        *("--loglevel", "DEBUG", "--pool", "threads", "--concurrency", "2"),
    ]

    def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
        wait_for(predicate, timeout, what, log, tail=6000)

    with process(command, ROOT, env, log):
        dispatcher = CeleryDispatcher(redis_server.url, queue)
        try:
            wait(lambda: "ready." in log.read_text(), 60, "ready worker")
            dispatcher.dispatch_sync(limited, {"n": 1})
            wait(lambda: store.sismember("running", "limited-1"), 30, "first run")
            dispatcher.dispatch_sync(limited, {"n": 2})
            wait(lambda: "flow-control turn" in log.read_text(), 30, "a deferred run")
            store.set("release", 1)
            dispatcher.dispatch_sync(gives_up, {"n": 1})
            dispatcher.dispatch_sync(retries_once, {"n": 1})
            done = {b"limited-1", b"limited-2", b"retries_once-1"}
            wait(lambda: store.smembers("done") == done, 60, "every job done")
            wait(lambda: "job failed: newuser.gives_up" in log.read_text(), 30, "give-up")
            wait(lambda: log.read_text().count("job completed") == 3, 30, "completions")
        finally:
            dispatcher.close()
    lines = log.read_text().splitlines()

    def count(text: str) -> int:
        return sum(text in line for line in lines)

    # Celery's own line per task is gone, at every level (DEBUG here) ...
    for celery_line in (" received", " succeeded in ", "raised unexpected", "] retry: "):
        assert count(celery_line) == 0, celery_line
    assert count("Traceback") == 0
    # ... and jobs_core's is one line per event: the deferral of limited-2 is no event.
    assert count("job started: newuser.limited") == 2
    assert count("job completed: newuser.limited") == 2
    assert count("job retrying: newuser.retries_once") == 1
    assert count("job completed: newuser.retries_once") == 1
    (failed,) = [line for line in lines if "PermanentError" in line]
    assert "ERROR" in failed and "job failed: newuser.gives_up" in failed


def record(logger: str, level: int, msg: str, args: Any, data: Any = None) -> logging.LogRecord:
    made = logging.LogRecord(logger, level, __file__, 1, msg, args, None)
    if data is not None:
        made.data = data
    return made


def log_outcome(kind: Any, dispatch_id: str) -> None:
    event = JobEvent(kind, "execute", "some.job", dispatch_id, 0, "test")
    LoggingInstrumentation(logging.getLogger("newuser.quiet")).record(event)


def test_celerys_line_is_dropped_only_where_jobs_core_logged_the_same_event() -> None:
    from celery.app import trace

    from jobs_core.backends.celery.worker import TaskLines

    lines = TaskLines()
    reported, unseen = f"t-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    log_outcome("failed", reported)
    log_outcome("retrying", reported)
    assert LOGGED_OUTCOMES.logged("failed", reported)

    def kept(msg: str, task_id: str, **data: Any) -> bool:
        made = record("celery.app.trace", logging.INFO, msg, (), {"id": task_id, **data})
        return lines.filter(made)

    assert not kept(trace.LOG_RECEIVED, unseen)
    assert not kept(trace.LOG_SUCCESS, unseen)
    assert not kept(trace.LOG_FAILURE.strip(), reported, internal=False)
    assert kept(trace.LOG_FAILURE.strip(), unseen, internal=False)  # jobs_core did not see it
    assert kept(trace.LOG_FAILURE.strip(), reported, internal=True)
    assert not kept(trace.LOG_RETRY, reported)
    assert kept(trace.LOG_RETRY, unseen)
    assert kept("Task handler raised error: %r", reported)


def test_dramatiqs_line_is_dropped_only_where_jobs_core_logged_the_same_event() -> None:
    from jobs_core.backends.dramatiq.worker import MessageLines
    from jobs_core.backends.dramatiq.worker import logger as _  # noqa: F401

    lines = MessageLines()
    reported, unseen = f"m-{uuid.uuid4().hex}", f"m-{uuid.uuid4().hex}"
    log_outcome("failed", reported)
    log_outcome("retrying", reported)

    def kept(msg: str, *args: Any) -> bool:
        return lines.filter(record("dramatiq.worker.WorkerThread", logging.INFO, msg, args))

    assert not kept(MessageLines.RETRYING, reported, 100)
    assert kept(MessageLines.RETRYING, unseen, 100)
    assert not kept(MessageLines.ABORTING, reported)
    assert not kept(MessageLines.EXPECTED, f"some.job(<payload>) [{reported}]", "JobGaveUp")
    assert kept(MessageLines.EXPECTED, f"some.job(<payload>) [{unseen}]", "JobGaveUp")
    assert kept("Failed to process message %s with unhandled exception.", reported)


def test_logging_nothing_keeps_the_librarys_lines() -> None:
    """With jobs_core's logger silenced, its line is not written, and the library's stays."""
    silent = logging.getLogger("newuser.silent")
    silent.setLevel(logging.CRITICAL + 1)
    dispatch_id = f"t-{uuid.uuid4().hex}"
    LoggingInstrumentation(silent).record(
        JobEvent("failed", "execute", "some.job", dispatch_id, 0, "test", error="E: x")
    )
    assert not LOGGED_OUTCOMES.logged("failed", dispatch_id)
