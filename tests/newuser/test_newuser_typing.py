"""Item 6: the development install (`pip install -e '.[dev]'`) is visible to type checkers from a
user's project outside the repository: mypy finds `jobs_core` and `jobs_core.backends.*` with
their types, with no MYPYPATH (tests/test_typing.py points mypy at the checkout instead)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]

USER_FILE = """
from __future__ import annotations

from jobs_core import JobRegistry, Payload
from jobs_core.backends.inline import InlineDispatcher

jobs = JobRegistry()


class Welcome(Payload):
    email: str


@jobs.job("mail.welcome")
def send_welcome(payload: Welcome) -> None: ...


def main() -> None:
    dispatcher = InlineDispatcher()
    reveal_type(dispatcher.dispatch_sync(send_welcome, {"email": "a@example.com"}))
    dispatcher.dispatch_sync(send_welcome, {"email": "a@example.com"}, dealy=1)  # WRONG
"""


def test_mypy_finds_the_development_install_from_a_users_project(tmp_path: Path) -> None:
    (tmp_path / "user_app.py").write_text(textwrap.dedent(USER_FILE))
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--strict", "--no-incremental"),
            *("--python-executable", sys.executable, "user_app.py"),
        ],
        cwd=tmp_path,  # outside the repository: only the install can make jobs_core found
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "import-not-found" not in done.stdout, done.stdout
    assert 'Revealed type is "jobs_core.dispatch.port.DispatchReceipt"' in done.stdout, done.stdout
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and '"dealy"' in errors[0], done.stdout


def test_the_install_has_no_top_level_backends_and_every_package_is_listed() -> None:
    """What the development install links (and a wheel holds) is the `packages` list: every
    package of jobs_core and of `backends/` must be in it."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for root in ("jobs_core", "backends"):
        for init in (ROOT / root).rglob("__init__.py"):
            parts = list(init.parent.relative_to(ROOT).parts)
            found.add(".".join(["jobs_core", *parts] if parts[0] == "backends" else parts))
    assert found == listed, {"missing from pyproject.toml": found - listed}
