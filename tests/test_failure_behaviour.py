"""Inline's failure behaviour, and how to make it the durable backends' (issue 18).

By default a job that gives up inline raises `JobFailedError` from `dispatch`, so a test fails at
the line that dispatched it; `raise_on_failure=False`, through `create_dispatcher` or the pytest
fixture's ini option, makes `dispatch` return as on every other backend. The conformance suite
checks the options on every backend (tests/conformance/test_dispatch_errors.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from jobs_core import (
    JobFailedError,
    JobRegistry,
    JobsSettings,
    PermanentError,
    create_dispatcher,
)
from jobs_core.testing import RecordingInstrumentation

ROOT = Path(__file__).resolve().parents[1]


class Charge(BaseModel):
    cents: int


def _registry(hooked: list[BaseException]) -> tuple[JobRegistry[Any], Any]:
    jobs = JobRegistry[Any]()

    @jobs.job("pay.charge", on_failure=lambda error, payload, ctx: hooked.append(error))
    def charge(payload: Charge, ctx: Any) -> None:
        raise PermanentError("card declined")

    return jobs, charge


def test_inline_raises_job_failed_error_by_default() -> None:
    hooked: list[BaseException] = []
    _, charge = _registry(hooked)
    dispatcher: Any = create_dispatcher(settings=JobsSettings(backend="inline"))
    assert dispatcher.raise_on_failure is True
    with pytest.raises(JobFailedError) as caught:
        dispatcher.dispatch_sync(charge, {"cents": 100})
    assert caught.value.job_name == "pay.charge" and caught.value.runs == 1
    assert isinstance(caught.value.error, PermanentError)
    assert len(hooked) == 1, "on_failure runs before dispatch raises"


async def test_inline_with_raise_on_failure_false_returns_like_the_durable_backends() -> None:
    hooked: list[BaseException] = []
    _, charge = _registry(hooked)
    events = RecordingInstrumentation()
    dispatcher: Any = create_dispatcher(
        settings=JobsSettings(backend="inline"), instrumentation=events, raise_on_failure=False
    )
    receipt = dispatcher.dispatch_sync(charge, {"cents": 100})
    async_receipt = await dispatcher.dispatch(charge, {"cents": 200})
    assert receipt.job_name == async_receipt.job_name == "pay.charge"
    assert len(hooked) == 2
    assert events.kinds("pay.charge") == ["scheduled", "started", "failed"] * 2


def test_inline_on_error_gets_the_give_up_instead() -> None:
    seen: list[tuple[BaseException, str]] = []
    _, charge = _registry([])
    dispatcher: Any = create_dispatcher(
        settings=JobsSettings(backend="inline"),
        on_error=lambda error, job: seen.append((error, job.name)),
    )
    dispatcher.dispatch_sync(charge, {"cents": 100})
    assert [(type(e), name) for e, name in seen] == [(PermanentError, "pay.charge")]


@pytest.mark.parametrize(("ini", "raises"), [("", True), ("false", False), ("true", True)])
def test_the_inline_fixture_follows_the_ini_option(tmp_path: Path, ini: str, raises: bool) -> None:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\n" + (f"jobs_inline_raise_on_failure = {ini}\n" if ini else "")
    )
    (tmp_path / "test_charge.py").write_text(
        textwrap.dedent(
            """
            from typing import Any
            import pytest
            from pydantic import BaseModel
            from jobs_core import JobFailedError, JobRegistry, PermanentError

            class Charge(BaseModel):
                cents: int

            jobs = JobRegistry[Any]()

            @jobs.job("pay.charge")
            def charge(payload: Charge, ctx: Any) -> None:
                raise PermanentError("card declined")

            def test_dispatch(inline_dispatcher: Any) -> None:
                try:
                    inline_dispatcher.dispatch_sync(charge, {"cents": 1})
                except JobFailedError:
                    print("RAISED")
                else:
                    print("RETURNED")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("RAISED" if raises else "RETURNED") in result.stdout, result.stdout
