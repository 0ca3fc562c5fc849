"""A small registry for the Inngest backend's own tests (and the worker CLI test)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from jobs_core import JobRegistry, Retry


class Greeting(BaseModel):
    name: str


jobs: JobRegistry[Any] = JobRegistry()
calls: list[str] = []


@jobs.job("inngest.greet", retry=Retry(attempts=0))
def greet(payload: Greeting, ctx: Any) -> None:
    calls.append(payload.name)


def make_context() -> dict[str, Any]:
    return {}
