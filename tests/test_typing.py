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

from jobs_core import JobDispatcherPort, JobRegistry, Steps, StepsSync


class Welcome(BaseModel):
    email: str


class Invoice(BaseModel):
    number: int


jobs = JobRegistry[None]()


@jobs.job("mail.welcome")
def send_welcome(payload: Welcome, ctx: None) -> None: ...


signed_up = jobs.event("user/signup.completed", Welcome)


def number_of(invoice: Invoice) -> int:
    return invoice.number


async def fetch_invoice(number: int) -> Invoice:
    return Invoice(number=number)


@jobs.job("billing.steps")
async def with_steps(payload: Invoice, ctx: None, step: Steps) -> None:
    n: int = await step.run("number", number_of, payload)  # right: the step's type
    invoice: Invoice = await step.run("fetch", fetch_invoice, n)  # right: awaited async fn
    s: str = await step.run("number-again", number_of, payload)  # WRONG-STEP-TYPE
    await step.run("bad-args", number_of, "not an invoice")  # WRONG-STEP-ARGS
    await step.send_event("emit", signed_up, Welcome(email="a@example.com"))
    await step.send_event("emit-bad", signed_up, Invoice(number=1))  # WRONG-EVENT-IN-RUN
    found = await step.wait_for_event("w", signed_up, match="email", timeout=timedelta(1))
    if found is not None:
        email: str = found.email  # right: the event's model
        del email
    del invoice, s


@jobs.job("billing.steps-sync")
def with_steps_sync(payload: Invoice, ctx: None, step: StepsSync) -> None:
    n: int = step.run("number", number_of, payload)
    s: str = step.run("number-again", number_of, payload)  # WRONG-SYNC-STEP-TYPE
    del n, s


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
    await dispatcher.send(signed_up, {"email": "e@example.com"}, id="signup-e")  # right
    dispatcher.send_sync(signed_up, Welcome(email="f@example.com"))  # right
    dispatcher.send_sync(signed_up, Invoice(number=4))  # WRONG-EVENT
    dispatcher.send_sync(signed_up, {"email": "g"}, idd="x")  # WRONG-SEND-OPTION
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
