"""Item 2: misconfiguration is never silent. A dispatcher built from the environment logs its
backend and broker once at INFO (password redacted), saying when inline is the default; an
unknown `JOBS_*` / `JOB_*` variable is a warning naming the nearest known one."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs_core import backend as backend_module
from jobs_core import config as config_module
from jobs_core import create_dispatcher
from jobs_core.config import OTHER_VARIABLES, check_environment, known_variables

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No JOBS_* / JOB_* / INNGEST_* variable, and a process that has warned and said nothing."""
    for name in list(os.environ):
        if name.upper().startswith(("JOBS_", "JOB_", "INNGEST_")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config_module, "_warned", set())
    monkeypatch.setattr(backend_module, "_announced", set())
    yield monkeypatch


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_a_typo_in_the_backends_name_is_a_warning_and_inline_says_it_is_the_default(
    environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    environment.setenv("JOB_BACKEND", "celery")
    caplog.set_level(logging.INFO, logger="jobs_core")
    create_dispatcher()
    (warning,) = lines(caplog, logging.WARNING)
    assert "JOB_BACKEND" in warning and "did you mean JOBS_BACKEND?" in warning
    assert "celery" not in warning  # values are never echoed (they may be secrets)
    (info,) = lines(caplog, logging.INFO)
    assert "backend inline (the default: JOBS_BACKEND is not set)" in info
    assert "jobs run inside dispatch" in info


def test_a_typo_in_the_brokers_name_is_a_warning_and_the_default_broker_is_named(
    environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    environment.setenv("JOBS_BACKEND", "celery")
    environment.setenv("JOBS_BROKER", "redis://:hunter2@broker.internal:6379/0")
    caplog.set_level(logging.INFO, logger="jobs_core")
    create_dispatcher().close()  # type: ignore[attr-defined]
    (warning,) = lines(caplog, logging.WARNING)
    assert "JOBS_BROKER " in warning and "did you mean JOBS_BROKER_URL?" in warning
    (info,) = lines(caplog, logging.INFO)
    assert "backend celery (JOBS_BACKEND)" in info
    assert "broker redis://localhost:6379/0 (the default: JOBS_BROKER_URL is not set)" in info
    assert "hunter2" not in caplog.text


def test_the_broker_is_logged_once_with_its_password_redacted(
    environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    environment.setenv("JOBS_BACKEND", "dramatiq")
    environment.setenv("JOBS_BROKER_URL", "redis://jobs:hunter2@127.0.0.1:1/0")
    caplog.set_level(logging.INFO, logger="jobs_core")
    for _ in range(2):
        create_dispatcher().close()  # type: ignore[attr-defined]
    (info,) = lines(caplog, logging.INFO)  # once, however many dispatchers
    assert "backend dramatiq (JOBS_BACKEND), broker redis://jobs:***@127.0.0.1:1/0" in info
    assert "hunter2" not in caplog.text
    assert lines(caplog, logging.WARNING) == []


def test_an_unknown_variable_warns_once_and_lowercase_names_are_known(
    environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    environment.setenv("jobs_queue", "mail")  # pydantic-settings reads names in any case
    environment.setenv("JOBS_QUEUES", "mail")
    caplog.set_level(logging.WARNING, logger="jobs_core")
    check_environment()
    check_environment()
    (warning,) = lines(caplog, logging.WARNING)
    assert "JOBS_QUEUES" in warning and "did you mean JOBS_QUEUE?" in warning


def test_other_tools_job_variables_are_left_alone(environment: pytest.MonkeyPatch) -> None:
    """`JOB_` is also the prefix of other tools' variables (Jenkins: JOB_NAME, JOB_URL): only a
    near miss of a jobs_core name is taken for a typo."""
    environment.setenv("JOB_NAME", "nightly-build")
    environment.setenv("JOB_URL", "https://ci.example.com/job/1")
    environment.setenv("JOB_QUEUE", "mail")
    given = check_environment()
    assert len(given) == 1 and "JOB_QUEUE" in given[0] and "JOBS_QUEUE" in given[0]


def test_every_jobs_variable_the_code_docs_and_tests_use_is_known() -> None:
    """Every `JOBS_*` name written in the code, the docs or the tests is one jobs_core knows
    (a settings field's variable, or one of `OTHER_VARIABLES`), so none of them warns."""
    texts = [(ROOT / "README.md").read_text()]
    for folder in ("jobs_core", "backends", "docs", "tests", "examples", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md") and "newuser" not in path.parts:
                texts.append(path.read_text())
    pattern = r"\bJOBS_[A-Z][A-Z0-9_]*[A-Z0-9]\b"
    used = {name for text in texts for name in re.findall(pattern, text)}
    constants = {  # Python names such as benchmarks' JOBS_CORE_WORKER, not variables
        name for text in texts for name in re.findall(rf"^\s*({pattern})\s*[:=]", text, re.M)
    }
    used -= constants
    known = set(known_variables())
    assert used - known == set(), sorted(used - known)
    assert set(OTHER_VARIABLES) <= known
    assert {"JOBS_BACKEND", "JOBS_BROKER_URL", "JOBS_QUEUE", "JOBS_FLOW_URL"} <= known


def test_a_worker_says_which_backend_and_broker_it_runs_on(
    environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from jobs_core.backend import announce
    from jobs_core.config import load_settings

    environment.setenv("JOBS_BROKER_URL", "amqp://jobs:hunter2@rabbit:5672//")
    caplog.set_level(logging.INFO, logger="jobs_core")
    announce(load_settings(backend="celery"), "worker")
    (info,) = lines(caplog, logging.INFO)
    assert info.startswith("jobs_core worker: backend celery (set in code)")
    assert "broker amqp://jobs:***@rabbit:5672// (JOBS_BROKER_URL)" in info
