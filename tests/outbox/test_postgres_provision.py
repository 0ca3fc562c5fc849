"""Without a PostgreSQL the PostgreSQL cases skip, saying why; in CI (`CI=true`) they fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run_a_postgres_case(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"CI", "JOBS_TEST_POSTGRES_URL"}}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
            "tests/outbox/test_outbox.py::test_C31_an_exception_in_the_transaction_sends_nothing",
        ],
        cwd=ROOT,
        env={**base, "JOBS_TEST_POSTGRES_BIN": "/nonexistent", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_postgres_the_cases_skip_and_say_why() -> None:
    done = _run_a_postgres_case()
    assert done.returncode == 0, done.stdout
    assert "1 passed, 1 skipped" in done.stdout
    assert "no PostgreSQL: set JOBS_TEST_POSTGRES_URL" in done.stdout


def test_in_ci_without_postgres_the_cases_fail() -> None:
    done = _run_a_postgres_case(CI="true")
    assert done.returncode != 0, done.stdout
    assert "CI must run the PostgreSQL tests" in done.stdout
