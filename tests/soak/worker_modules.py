"""The soak's jobs as a user's worker module declares them, for the native worker commands.

`dramatiq tests.soak.worker_modules`, `celery -A tests.soak.worker_modules:celery_app worker`
and `python -m jobs_core worker tests.soak.worker_modules:inngest_jobs` (JOBS_BACKEND=inngest,
tests/soak/reliability_runs.py), configured from the environment: `JOBS_BACKEND`,
`JOBS_BROKER_URL`, `JOBS_QUEUE`, for Celery `SOAK_VISIBILITY_TIMEOUT` (seconds, so that a
killed worker's jobs come back within a run; a deployment keeps the default), and for Inngest
the SDK's `INNGEST_*` variables and `SOAK_INNGEST_ATTEMPTS` (tests/soak/app.py).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from jobs_core import JobRegistry
from tests.soak.app import RETRY, create_context, inngest_attempts, jobs, record_failure, work

broker: Any = None
celery_app: Any = None
inngest_jobs: JobRegistry[Any] = JobRegistry()
"""The soak's job with room in its attempts for the kills (see `app.INNGEST_ATTEMPTS`)."""

if os.environ.get("JOBS_BACKEND") == "celery":
    from jobs_core.backends.celery import create_celery_app

    celery_app = create_celery_app(
        jobs,
        context=create_context,
        visibility_timeout=float(os.environ.get("SOAK_VISIBILITY_TIMEOUT", "0")) or None,
        broker_transport_options={"unacked_restore_interval": 1, "unacked_restore_throttle": 1},
    )
elif os.environ.get("JOBS_BACKEND") == "inngest":
    inngest_jobs.define_job(
        work.name,
        handle=work.handler,
        payload=work.payload_model,
        retry=dataclasses.replace(RETRY, attempts=inngest_attempts()),
        on_failure=record_failure,
    )
else:
    from jobs_core.backends.dramatiq import register_actors

    broker = register_actors(jobs, context=create_context)
