"""The Inngest backend: a dispatch is an Inngest event, and each job an Inngest function.

Producers: `InngestDispatcher(client)` (or `create_dispatcher()` with `JOBS_BACKEND=inngest`).
Workers: the functions of `create_inngest_functions(registry, context=...)` served by your web
app (`serve`, `serve_flask`, `serve_django`), or `create_inngest_app` and
`python -m jobs_core worker`.
"""

from __future__ import annotations

from jobs_core.backend import missing_extra

try:
    import httpx as _httpx  # noqa: F401
    import inngest as _inngest  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by C24 with the module hidden
    raise missing_extra("inngest", "inngest", getattr(exc, "name", None) or str(exc)) from exc

from .dispatcher import (
    InngestDispatcher,
    InngestPort,
    check_job_name,
    create_dispatcher,
    create_inngest_client,
    event_id_for,
)
from .fixes import retry_failure_function
from .functions import create_inngest_functions, create_inngest_job_function
from .schedules import create_inngest_schedule_functions
from .serve import (
    DEFAULT_SERVE_PATH,
    create_inngest_app,
    run_worker,
    serve,
    serve_django,
    serve_flask,
)

__all__ = [
    "DEFAULT_SERVE_PATH",
    "InngestDispatcher",
    "InngestPort",
    "check_job_name",
    "create_dispatcher",
    "create_inngest_app",
    "create_inngest_client",
    "create_inngest_functions",
    "create_inngest_job_function",
    "create_inngest_schedule_functions",
    "event_id_for",
    "retry_failure_function",
    "run_worker",
    "serve",
    "serve_django",
    "serve_flask",
]
