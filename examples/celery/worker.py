"""The quickstart's jobs in a Celery worker: `celery -A examples.celery.worker:celery_app worker`.

The app is built from the quickstart's registry and context factory; the broker and queue come
from `JOBS_BROKER_URL` and `JOBS_QUEUE` (defaults `redis://localhost:6379/0`, `default`).
"""

from __future__ import annotations

from examples.quickstart import create_context, jobs
from jobs_core.backends.celery import create_celery_app

celery_app = create_celery_app(jobs, context=create_context)
