"""Item 9: the command line is a console script (`jobs-core`) that takes the backend as an
option, and the README's first example is the smallest job, run as the README says: on inline,
and on Celery with a real worker against a private redis-server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.newuser.processes import environment, process, wait_for

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
JOBS_CORE = Path(sys.executable).parent / "jobs-core"

pytestmark = pytest.mark.timeout(180)


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def smallest_job() -> str:
    (code,) = re.findall(r"```python\n(.*?)```", section("The smallest job"), flags=re.S)
    return code


def commands() -> list[list[str]]:
    """The section's shell commands, as argument lists (`.venv/bin/jobs-core` as installed)."""
    blocks = re.findall(r"```bash\n(.*?)```", section("The smallest job"), flags=re.S)
    found = []
    for line in "\n".join(blocks).splitlines():
        words = re.findall(r"'[^']*'|\S+", line)
        if not words:
            continue
        assert words[0] == ".venv/bin/jobs-core", line
        found.append([str(JOBS_CORE), *(w.strip("'") for w in words[1:])])
    return found


def test_the_readme_starts_with_the_smallest_job() -> None:
    code_lines = [
        line for line in smallest_job().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert len(code_lines) <= 7, code_lines
    first_python_block = re.search(r"```python\n(.*?)```", README, flags=re.S)
    assert first_python_block is not None and first_python_block.group(1) == smallest_job()
    assert README.index("## The smallest job") < README.index("## A complete example")


def test_the_console_script_is_installed_and_python_m_still_works() -> None:
    for command in ([str(JOBS_CORE)], [sys.executable, "-m", "jobs_core"]):
        done = subprocess.run(
            [*command, "worker", "--help"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "--backend NAME" in done.stdout and "--context" in done.stdout


def test_the_smallest_job_runs_inline_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "welcome.py").write_text(smallest_job())
    dispatch = next(c for c in commands() if c[1] == "dispatch" and "--backend" not in c)
    done = subprocess.run(
        dispatch, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    printed, receipt = done.stdout.strip().splitlines()
    assert printed == "Welcome, ada@example.com!"
    assert json.loads(receipt)["backend"] == "inline"


def test_the_smallest_job_runs_on_a_celery_worker(tmp_path: Path, redis_server: Any) -> None:
    (tmp_path / "welcome.py").write_text(smallest_job())
    worker = next(c for c in commands() if c[1] == "worker")
    dispatch = next(c for c in commands() if c[1] == "dispatch" and "--backend" in c)
    assert worker[-2:] == dispatch[-2:] == ["--backend", "celery"]
    env = environment(JOBS_BROKER_URL=redis_server.url, JOBS_QUEUE=f"readme-{uuid.uuid4().hex}")
    log = tmp_path / "worker.log"
    # The README's command, with a small pool for the test (options after `--` go to Celery).
    with process([*worker, "--", "--pool", "threads", "--concurrency", "1"], tmp_path, env, log):
        wait_for(lambda: "ready." in log.read_text(), 60, "ready worker", log)
        done = subprocess.run(
            dispatch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        receipt = json.loads(done.stdout)
        assert receipt["backend"] == "celery" and receipt["job"] == "mail.welcome"
        wait_for(lambda: "Welcome, ada@example.com!" in log.read_text(), 60, "welcome", log)
    output = log.read_text()
    assert "jobs_core worker: backend celery (--backend)" in output
    assert f"broker {redis_server.url} (JOBS_BROKER_URL)" in output
