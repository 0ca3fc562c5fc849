"""One kill run and one restart run of tests/soak/reliability_runs.py per backend, on demand:
`python -m pytest --run-reliability-runs tests/soak/test_reliability_runs.py -s`. The figures
in the docs come from the script itself (`python -m tests.soak.reliability_runs dramatiq`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak.reliability_runs import run_once

pytestmark = [pytest.mark.reliability_runs, pytest.mark.timeout(900)]


@pytest.mark.parametrize("scenario", ["kill", "restart"])
@pytest.mark.parametrize("backend", ["dramatiq", "celery", "inngest"])
def test_no_job_is_lost(backend: str, scenario: str, tmp_path: Path) -> None:
    result = run_once(backend, scenario, 2000, seed=100, log_dir=tmp_path)
    print("\n" + result.line())
    assert result.lost == [], result.line()
    assert result.gave_up_early == [], result.line()
    assert result.worker_exits == 0, result.line()
    assert result.drained, result.line()
