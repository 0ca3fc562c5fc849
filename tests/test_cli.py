"""`python -m jobs_core`: list, dispatch and worker, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs_core", *args],
        cwd=ROOT,
        env={**os.environ, "JOBS_BACKEND": "inline", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_prints_names_retry_and_schema() -> None:
    result = run_cli("list", "examples.quickstart:jobs", "--json")
    assert result.returncode == 0, result.stderr
    listed = {job["name"]: job for job in json.loads(result.stdout)}
    assert set(listed) == {"mail.welcome", "contacts.import", "billing.charge"}
    assert listed["mail.welcome"]["retry"]["attempts"] == 3
    assert listed["mail.welcome"]["payload_schema"]["required"] == ["email"]


def test_dispatch_runs_inline_and_prints_the_receipt() -> None:
    result = run_cli(
        "dispatch",
        "examples.quickstart:jobs",
        "mail.welcome",
        '{"email": "a@example.com"}',
        "--context",
        "examples.quickstart:create_context",
    )
    assert result.returncode == 0, result.stderr
    assert "mailer: to=a@example.com" in result.stdout
    receipt = json.loads(result.stdout.strip().splitlines()[-1])
    assert receipt["job"] == "mail.welcome" and receipt["backend"] == "inline"


def test_bad_input_gives_clear_errors() -> None:
    bad_payload = run_cli("dispatch", "examples.quickstart:jobs", "mail.welcome", '{"email": 1}')
    assert (
        bad_payload.returncode == 2
        and "invalid payload for job 'mail.welcome'" in bad_payload.stderr
    )
    not_json = run_cli("dispatch", "examples.quickstart:jobs", "mail.welcome", "{nope")
    assert not_json.returncode == 2 and "not valid JSON" in not_json.stderr
    unknown_job = run_cli("dispatch", "examples.quickstart:jobs", "mail.nope", "{}")
    assert unknown_job.returncode == 2 and "no job named 'mail.nope'" in unknown_job.stderr
    bad_target = run_cli("list", "examples.quickstart")
    assert bad_target.returncode == 2 and "package.module:name" in bad_target.stderr
    not_registry = run_cli("list", "examples.quickstart:Mailer")
    assert not_registry.returncode == 2 and "not a JobRegistry" in not_registry.stderr
    inline_worker = run_cli("worker", "examples.quickstart:jobs")
    assert inline_worker.returncode == 2 and "no worker" in inline_worker.stderr
    unknown_backend = run_cli("worker", "examples.quickstart:jobs", JOBS_BACKEND="nope")
    assert (
        unknown_backend.returncode == 2
        and "inline, inngest, celery, dramatiq" in unknown_backend.stderr
    )


def test_quickstart_prints_what_ran() -> None:
    result = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "JOBS_BACKEND": "inline"},
    )
    assert result.returncode == 0, result.stderr
    summary = result.stdout.split("job ")[-1]
    assert "mail.welcome          1  completed" in summary
    assert "contacts.import       3  completed" in summary
    assert "billing.charge        1  failed" in summary
