"""`mypy --strict` checks a dispatch's payload against its job's model, and its options, as a
user's CI would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jobs_core

USER_FILE = """
from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from jobs_core import JobDispatcherPort, JobRegistry


class Welcome(BaseModel):
    email: str


class Invoice(BaseModel):
    number: int


jobs = JobRegistry[None]()


@jobs.job("mail.welcome")
def send_welcome(payload: Welcome, ctx: None) -> None: ...


async def use_case(dispatcher: JobDispatcherPort) -> None:
    dispatcher.dispatch_sync(send_welcome, Welcome(email="a@example.com"))  # right
    await dispatcher.dispatch(send_welcome, {"email": "a@example.com"})  # right
    await dispatcher.dispatch_many([send_welcome.request(Welcome(email="b@example.com"))])
    dispatcher.dispatch_sync(send_welcome, Invoice(number=1))  # WRONG-SYNC
    await dispatcher.dispatch(send_welcome, Invoice(number=2))  # WRONG-ASYNC
    dispatcher.dispatch_many_sync([send_welcome.request(Invoice(number=3))])  # WRONG-MANY
    dispatcher.dispatch_sync(send_welcome, {"email": "c"}, delay=timedelta(1), idempotency_key="k")
    dispatcher.dispatch_sync(send_welcome, {"email": "d"}, dealy=timedelta(1))  # WRONG-OPTION
    dispatcher.dispatch_many_sync([], idempotency_key="k")  # WRONG-MANY-OPTION
"""


def test_mypy_flags_a_payload_of_another_model(tmp_path: Path) -> None:
    source = textwrap.dedent(USER_FILE)
    (tmp_path / "user_app.py").write_text(source)
    # mypy cannot follow setuptools' editable-install import hook: point it at the package.
    package_root = Path(jobs_core.__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "user_app.py"],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(package_root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = source.splitlines()
    wrong = {i + 1 for i, line in enumerate(lines) if "# WRONG" in line}
    flagged = {int(line.split(":")[1]) for line in done.stdout.splitlines() if ": error:" in line}
    assert flagged == wrong, done.stdout
    assert done.returncode == 1
