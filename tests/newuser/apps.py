"""Registries the tests of issue 28 load by name, as a user's `myapp.jobs:jobs`."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from jobs_core import JobRegistry


@dataclass
class AppContext:
    greeting: str


class Welcome(BaseModel):
    email: str


typed_jobs = JobRegistry[AppContext]()
"""Its job takes an `AppContext`: a worker without one is refused."""


@typed_jobs.job("newuser.typed")
def greet(payload: Welcome, ctx: AppContext) -> None:
    print(f"{ctx.greeting}, {payload.email}")


context_free_jobs = JobRegistry[AppContext]()
"""Typed, but none of its jobs takes a context: no context needed."""


@context_free_jobs.job("newuser.context_free")
def greet_alone(payload: Welcome) -> None:
    print(f"hello, {payload.email}")


def create_context() -> AppContext:
    return AppContext(greeting="hello")
