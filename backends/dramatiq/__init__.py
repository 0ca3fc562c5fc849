"""The Dramatiq backend: each job is a Dramatiq actor named after it, run through the core's worker.

Producers: `DramatiqDispatcher(broker_url, queue)` (or `create_dispatcher()` with
`JOBS_BACKEND=dramatiq`). Workers: `broker = register_actors(registry, context=...)` in a
module and `dramatiq that.module`, or `python -m jobs_core worker`.
"""

from __future__ import annotations

from jobs_core.backend import missing_extra

try:
    import dramatiq as _dramatiq  # noqa: F401
    import redis as _redis  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by C24 with the module hidden
    raise missing_extra("dramatiq", "dramatiq", getattr(exc, "name", None) or str(exc)) from exc

from .broker import close_broker, make_worker_broker
from .dispatcher import DramatiqDispatcher, create_dispatcher
from .worker import JobGaveUp, JobsMiddleware, register_actors, run_worker

__all__ = [
    "DramatiqDispatcher",
    "JobGaveUp",
    "JobsMiddleware",
    "close_broker",
    "create_dispatcher",
    "make_worker_broker",
    "register_actors",
    "run_worker",
]
