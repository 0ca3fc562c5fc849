"""A worker module for Dramatiq's own CLI: `dramatiq tests.dramatiq.cli_app`.

`register_actors` at import declares the actors and sets Dramatiq's global broker (from
`JOBS_BROKER_URL` / `JOBS_QUEUE`), which is what the CLI looks for.
"""

from __future__ import annotations

from jobs_core.backends.dramatiq import register_actors
from tests.dramatiq.app import create_context, jobs

broker = register_actors(jobs, context=create_context)
