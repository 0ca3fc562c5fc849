"""Runs every contract test on the backend harnesses of its set (`HARNESS_SETS`).

A test takes the `harness` fixture and runs once per harness of its set: by default `HARNESSES`,
every backend on its real broker or server. A test whose clause is about what a backend does
with a job (validating, running, retrying, reporting it), not about the broker, says
`@pytest.mark.harnesses("in_process")`: it runs on the same backends on the libraries' own
in-process fakes, which are faster and need no broker to be proven idle (`drain()`). A test
that checks both the semantics and the broker's part says `"all"`. Every set names every
backend: a backend is added to each, never skipped silently.
"""

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
"""Every backend under the contract, on a real broker or server: Celery and Dramatiq on the
session's private redis-server, Inngest on the loopback stand-in (tests/inngest_harness) calling
the app served under uvicorn, and on the real Inngest Dev Server (`inngest-devserver`: it skips,
saying so, where no `inngest` / `inngest-cli` binary is on PATH). The default set: C7, C16 and
C17 (raw messages, dead letters), what `enqueued_count` counts at the broker, and every test
that names no set, run here."""

IN_PROCESS_HARNESSES = [
    "inline",
    "celery-memory",
    "dramatiq-stub",
    "inngest-asgi",
    "inngest-devserver",
]
"""The same backends on the libraries' own fakes, in the test's process: a real Celery worker
on kombu's `memory://` transport, a real Dramatiq worker on Dramatiq's `StubBroker`, and the
stand-in Inngest calling the app in process through httpx's ASGI transport (no uvicorn, no
port). The real Inngest Dev Server stays in the set where it is installed: it is the check
that the stand-in behaves as Inngest does."""

HARNESS_SETS = {
    "brokers": HARNESSES,
    "in_process": IN_PROCESS_HARNESSES,
    "all": list(dict.fromkeys(HARNESSES + IN_PROCESS_HARNESSES)),
}
"""`@pytest.mark.harnesses(<set>)` picks one; a test without the mark runs on `brokers`."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "harnesses(name): the conformance harnesses a test runs on, one of "
        f"{sorted(HARNESS_SETS)} (tests/conformance/conftest.py); default 'brokers'",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("harnesses")
    chosen = marker.args[0] if marker is not None else "brokers"
    if chosen not in HARNESS_SETS:
        raise pytest.UsageError(f"harnesses({chosen!r}): use one of {sorted(HARNESS_SETS)}")
    names = HARNESS_SETS[chosen]
    metafunc.parametrize("harness", names, indirect=True, ids=names, scope="session")


@pytest.fixture(scope="session")
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
