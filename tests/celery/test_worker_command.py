"""`python -m jobs_core worker` on Celery logs at a level a production worker can afford."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs_core.backends.celery import CeleryDispatcher
from tests.celery.app import DONE, work
from tests.celery.workers import wait_for, worker_processes

pytestmark = pytest.mark.timeout(120)


def test_the_worker_command_logs_no_line_per_successful_job(
    redis_server: Any, store: Any, tmp_path: Path
) -> None:
    """INFO by default (the worker says it is ready), but no line per job that went well:
    neither Celery's 'received' and 'succeeded' nor jobs_core's 'completed'."""
    client = store.client()
    with worker_processes(redis_server.url, store.url, "quiet", tmp_path) as workers:
        workers.start_jobs_core_worker("--pool", "threads", "--concurrency", "2")
        dispatcher = CeleryDispatcher(redis_server.url, "quiet")
        try:
            dispatcher.dispatch_many_sync([(work, {"n": n}) for n in range(20)])
        finally:
            dispatcher.close()
        wait_for(lambda: client.scard(DONE) == 20, 60, "20 jobs", workers.logs)
        workers.stop_all()
        output = workers.logs()
    assert "ready." in output, output
    for per_job in ("received", "succeeded", "job completed"):
        assert per_job not in output, output
