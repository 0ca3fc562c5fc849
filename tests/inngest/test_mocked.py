"""A second, lighter check of the job functions through the SDK's `inngest.experimental.mocked`.

`mocked.trigger` runs attempts 0..retries with no server at all. It ignores
`NonRetriableError` (BACKEND_NOTES), so these checks use jobs whose outcome does not depend on
it: one that succeeds on its third run, and one whose retries run out.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from inngest.experimental import mocked

from jobs_core import JobRegistry, Retry
from jobs_core.backends.inngest import create_inngest_job_function
from jobs_core.testing import RecordingInstrumentation
from tests.inngest.app import Greeting


def test_job_that_fails_twice_then_succeeds() -> None:
    registry: JobRegistry[Any] = JobRegistry()
    runs: list[str] = []

    @registry.job("mocked.flaky", retry=Retry(attempts=3, min_backoff=timedelta(0)))
    def flaky(payload: Greeting, ctx: Any) -> None:
        runs.append(payload.name)
        if len(runs) < 3:
            raise RuntimeError(f"failure {len(runs)}")

    events = RecordingInstrumentation()
    client = mocked.Inngest(app_id="mocked")
    fn = create_inngest_job_function(client, flaky, context=None, instrumentation=events)
    result = mocked.trigger(fn, _event("mocked.flaky", {"name": "x"}), client)

    assert result.status is mocked.Status.COMPLETED
    assert runs == ["x", "x", "x"]
    assert events.kinds("mocked.flaky") == [
        "started",
        "retrying",
        "started",
        "retrying",
        "started",
        "completed",
    ]


def test_job_whose_retries_run_out_calls_on_failure_once() -> None:
    registry: JobRegistry[Any] = JobRegistry()
    failures: list[BaseException] = []

    @registry.job(
        "mocked.broken",
        retry=Retry(attempts=2, min_backoff=timedelta(0)),
        on_failure=lambda error, payload, ctx: failures.append(error),
    )
    async def broken(payload: Greeting, ctx: Any) -> None:
        raise ValueError("always")

    events = RecordingInstrumentation()
    client = mocked.Inngest(app_id="mocked")
    fn = create_inngest_job_function(client, broken, context=None, instrumentation=events)
    result = mocked.trigger(fn, _event("mocked.broken", {"name": "y"}), client)

    assert result.status is mocked.Status.FAILED
    assert [str(e) for e in failures] == ["always"]
    assert events.kinds("mocked.broken") == [
        "started",
        "retrying",
        "started",
        "retrying",
        "started",
        "failed",
    ]
    assert [e.attempt for e in events.for_job("mocked.broken") if e.kind == "started"] == [0, 1, 2]


def _event(name: str, data: dict[str, Any]) -> Any:
    import inngest

    return inngest.Event(name=name, data=data)
