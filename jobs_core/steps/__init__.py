"""Durable steps (C34–C39): `Steps`, `StepsSync`, and where a run's steps are kept (`StepStore`).

The engine that runs them on Celery, Dramatiq and inline is `jobs_core.steps.engine`; the
stores are `jobs_core.steps.store` (in process), `redis_store` and `sql_store`.
"""

from .steps import Steps, StepsSync
from .store import DEFAULT_RETENTION, MemoryStepStore, StepStore

__all__ = ["DEFAULT_RETENTION", "MemoryStepStore", "StepStore", "Steps", "StepsSync"]
