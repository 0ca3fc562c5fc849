"""The quickstart's jobs, run by a Dramatiq worker.

    export JOBS_BACKEND=dramatiq JOBS_BROKER_URL=redis://localhost:6379/0
    dramatiq examples.dramatiq.worker --processes 1 --threads 4

Importing this module declares one Dramatiq actor per job of `examples.quickstart:jobs` and sets
Dramatiq's global broker (from JOBS_BROKER_URL, queue JOBS_QUEUE), which is what the `dramatiq`
command looks for. The same worker without this module:

    python -m jobs_core worker examples.quickstart:jobs --context examples.quickstart:create_context
"""

from __future__ import annotations

from examples.quickstart import create_context, jobs
from jobs_core.backends.dramatiq import register_actors

broker = register_actors(jobs, context=create_context)
