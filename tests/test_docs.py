"""The code in README.md and docs/ works as printed.

Every ```python block is collected by pytest-examples and linted with the project's ruff
settings. A block is then run on its own, on the inline backend, with no external service; any
`test_*` function it defines is called too (with pytest fixtures for its parameters), so the
tests a page shows are run as well. A block fenced ```python test="skip"``` (one that needs a
broker, a server or a project layout) is only compiled and linted.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_examples import CodeExample, EvalExample, find_examples
from pytest_examples.lint import FormatError, ruff_check
from ruff.__main__ import find_ruff_bin

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [
    *find_examples(ROOT / "README.md"),
    *sorted(find_examples(ROOT / "docs"), key=lambda e: (str(e.path), e.start_line)),
]
SETTINGS = {"test": {"skip"}}
"""The options a fence may carry, and their allowed values: a typo must not skip a test."""


def example_id(example: CodeExample) -> str:
    return f"{example.path.relative_to(ROOT)}:{example.start_line}"


def skipped(example: CodeExample) -> bool:
    return example.prefix_settings().get("test") == "skip"


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run an example as a fresh script would: inline backend, and nothing leaks into later tests.

    An example runs in this process as `__main__`; it may set environment variables (Inngest dev
    mode, say) or configure logging, which must not reach the tests that run after it.
    """
    monkeypatch.chdir(ROOT)
    for name in list(os.environ):
        if name.startswith(("JOBS_", "INNGEST_")):
            monkeypatch.delenv(name)
    environ = dict(os.environ)
    main = sys.modules["__main__"]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        sys.modules["__main__"] = main
        os.environ.clear()
        os.environ.update(environ)
        root.handlers[:] = handlers
        root.setLevel(level)


USER_VIEW = (
    "--config",
    'lint.isort.known-third-party = ["jobs_core"]',
    "--config",
    'lint.isort.known-first-party = ["myapp", "myproject"]',
)
"""Lint as in a user's project: jobs_core is a dependency there, and `myapp` their own code."""


def check_lint(example: CodeExample, eval_example: EvalExample) -> None:
    """`ruff check` with the project's rules, isort and pyupgrade for Python 3.10."""
    eval_example.set_config(line_length=100, target_version="py310", isort=True, upgrade=True)
    try:
        ruff_check(example, eval_example.config, extra_ruff_args=USER_VIEW)
    except FormatError as error:
        pytest.fail(str(error), pytrace=False)


def check_format(example: CodeExample) -> None:
    """`ruff format` leaves the block as it is (the project's settings, from pyproject.toml)."""
    done = subprocess.run(
        [find_ruff_bin(), "format", "--diff", "-"],
        input=example.source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{example_id(example)}: not formatted as `ruff format` would:\n{done.stdout}"
            f"{done.stderr}",
            pytrace=False,
        )


def run_tests_of(namespace: dict[str, Any], request: pytest.FixtureRequest) -> list[str]:
    """Call the example's `test_*` functions, as pytest would, with fixtures by parameter name."""
    ran = []
    for name, test in list(namespace.items()):
        if not name.startswith("test_") or not inspect.isfunction(test):
            continue
        if test.__module__ != "__main__":  # imported, not defined by the example
            continue
        fixtures = {p: request.getfixturevalue(p) for p in inspect.signature(test).parameters}
        if inspect.iscoroutinefunction(test):
            asyncio.run(test(**fixtures))
        else:
            test(**fixtures)
        ran.append(name)
    return ran


@pytest.mark.parametrize("example", EXAMPLES, ids=example_id)
def test_example(
    example: CodeExample,
    eval_example: EvalExample,
    request: pytest.FixtureRequest,
    isolated: None,
    tmp_path: Path,
) -> None:
    settings = example.prefix_settings()
    for key, value in settings.items():
        assert value in SETTINGS.get(key, ()), f"unknown fence option {key}={value!r}"
    check_lint(example, eval_example)
    check_format(example)
    if skipped(example):
        compile(example.source, example_id(example), "exec")
        return
    if "settings.configure(" in example.source:
        run_in_a_fresh_process(example, tmp_path)  # Django's settings are set once a process
        return
    namespace = eval_example.run(example)
    shown = re.findall(r"^(?:async )?def (test_\w+)", example.source, flags=re.M)
    assert sorted(run_tests_of(namespace, request)) == sorted(shown)


def run_in_a_fresh_process(example: CodeExample, tmp_path: Path) -> None:
    """Run the block as its own test module under pytest in a new interpreter: as a script
    (its module code) and its `test_*` functions, each of which must pass."""
    module = tmp_path / "test_example.py"
    module.write_text(example.source)
    shown = re.findall(r"^(?:async )?def (test_\w+)", example.source, flags=re.M)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)]
        if shown
        else [sys.executable, str(module)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{example_id(example)}:\n{done.stdout}\n{done.stderr}"
    if shown:
        assert f"{len(shown)} passed" in done.stdout, done.stdout


def test_examples_are_found() -> None:
    pages = {e.path.relative_to(ROOT).as_posix() for e in EXAMPLES}
    assert "README.md" in pages
    assert len(pages) >= 10, pages
    ran = [e for e in EXAMPLES if not skipped(e)]
    assert len(ran) >= 3 * (len(EXAMPLES) - len(ran)), "skips must stay rare"


def test_readme_complete_example_is_run() -> None:
    """The README's complete example (a job, a context, the dispatcher, a dispatch and a test)
    is one of the blocks that run, not a skipped one."""
    readme = [e for e in EXAMPLES if e.path == ROOT / "README.md" and not skipped(e)]
    complete = [
        e
        for e in readme
        if all(
            part in e.source
            for part in ("JobRegistry", "BaseModel", "create_dispatcher(", "dispatch", "def test_")
        )
        and ("RecordingDispatcher" in e.source or "inline_dispatcher" in e.source)
    ]
    assert complete, "README.md has no complete example among its executed python blocks"
