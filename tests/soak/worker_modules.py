"""The soak's jobs as a user's worker module declares them, for the native worker commands.

`dramatiq tests.soak.worker_modules` and `celery -A tests.soak.worker_modules:celery_app worker`
(tests/soak/reliability_runs.py), configured from the environment: `JOBS_BACKEND`,
`JOBS_BROKER_URL`, `JOBS_QUEUE`, and for Celery `SOAK_VISIBILITY_TIMEOUT` (seconds, so that a
killed worker's jobs come back within a run; a deployment keeps the default).
"""

from __future__ import annotations

import os
from typing import Any

from tests.soak.app import create_context, jobs

broker: Any = None
celery_app: Any = None

if os.environ.get("JOBS_BACKEND") == "celery":
    from jobs_core.backends.celery import create_celery_app

    celery_app = create_celery_app(
        jobs,
        context=create_context,
        visibility_timeout=float(os.environ.get("SOAK_VISIBILITY_TIMEOUT", "0")) or None,
        broker_transport_options={"unacked_restore_interval": 1, "unacked_restore_throttle": 1},
    )
else:
    from jobs_core.backends.dramatiq import register_actors

    broker = register_actors(jobs, context=create_context)
