"""`python -m jobs_core worker` with `JOBS_BACKEND=inngest`: serves the registry over HTTP with
uvicorn, and a job dispatched to the stand-in Event API runs in that process."""

from __future__ import annotations

from contextlib import closing

import inngest
import pytest

from jobs_core.backends.inngest import InngestDispatcher
from tests.inngest.app import greet
from tests.inngest.workers import worker_process
from tests.inngest_harness import InngestHarness

pytestmark = pytest.mark.timeout(90)

WAIT = 20.0


def test_worker_command_serves_the_jobs_and_runs_them() -> None:
    with InngestHarness() as harness:
        context = ("--context", "tests.inngest.app:make_context")
        served = worker_process(
            harness, "tests.inngest.app:jobs", *context, app_name="cli-app", path="/jobs/inngest"
        )
        with served as (url, _):
            [fn] = harness.register_app(url)
            assert fn.id == "cli-app-inngest.greet" and fn.retries == 0

            client = inngest.Inngest(app_id="cli-app", **harness.client_kwargs())
            with closing(InngestDispatcher(client)) as dispatcher:
                receipt = dispatcher.dispatch_sync(greet, {"name": "from the cli"})
            [run] = harness.wait_for_runs(1, timeout=WAIT)
            assert run.status == "completed", run
            assert run.event["id"] == receipt.dispatch_id
            assert run.event["data"] == {"name": "from the cli"}
