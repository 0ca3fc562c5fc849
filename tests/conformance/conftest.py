"""Runs every contract test on every backend harness listed in HARNESSES."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jobs_core import JobRegistry
from jobs_core.testing import RecordingInstrumentation

from .harness import BackendHarness

HARNESSES = ["inline", "celery", "dramatiq", "inngest", "inngest-devserver"]
"""Every backend under the contract. A backend is added here, never skipped silently.
`inngest-devserver` is the Inngest backend against the real Inngest Dev Server: it skips,
saying so, where no `inngest` / `inngest-cli` binary is on PATH."""


@pytest.fixture(params=HARNESSES, scope="session")
def harness(request: pytest.FixtureRequest, resources: Any) -> Iterator[BackendHarness]:
    module = importlib.import_module(f"tests.conformance.harness_{request.param.replace('-', '_')}")
    made: BackendHarness = module.make_harness(resources)
    yield made
    close = getattr(made, "close", None)
    if close is not None:
        close()


@pytest.fixture
def jobs() -> JobRegistry[Any]:
    return JobRegistry()


@pytest.fixture
def events() -> RecordingInstrumentation:
    return RecordingInstrumentation()


@pytest.fixture
def unique() -> str:
    """A suffix for job names, so no two tests share a queue or a task name."""
    return uuid.uuid4().hex[:8]
