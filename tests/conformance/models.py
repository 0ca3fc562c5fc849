"""Payload models and small thread-safe recorders shared by the contract tests."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from jobs_core import JobRegistry


class Note(BaseModel):
    text: str
    n: int = 0


class Colour(str, Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    city: str


class Rich(BaseModel):
    when: datetime
    day: date
    ident: UUID
    amount: Decimal
    colour: Colour
    address: Address
    tags: list[str]
    nickname: str | None = None
    text: str


class Runs:
    """Thread-safe record of handler runs (and failure-hook calls) with their monotonic times."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[float, Any]] = []
        self.failures: list[tuple[BaseException, Any]] = []
        self.contexts = 0

    def add(self, item: Any = None) -> int:
        with self._lock:
            self.calls.append((time.monotonic(), item))
            return len(self.calls)

    def fail(self, error: BaseException, payload: Any, ctx: Any = None) -> None:
        """Record a failure-hook call: `on_failure=runs.fail` is a job's hook that does this."""
        with self._lock:
            self.failures.append((error, payload))

    def make_context(self) -> dict[str, Any]:
        with self._lock:
            self.contexts += 1
        return {"runs": self}

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.calls)

    @property
    def items(self) -> list[Any]:
        with self._lock:
            return [item for _, item in self.calls]

    def gaps(self) -> list[float]:
        with self._lock:
            times = [t for t, _ in self.calls]
        return [b - a for a, b in itertools.pairwise(times)]


def recording_job(
    jobs: JobRegistry[Any],
    name: str,
    runs: Runs,
    *,
    payload: type[BaseModel] = Note,
    **options: Any,
) -> Any:
    """Define in `jobs` a job `name` (a `payload` model, the job options `options`) that only
    records each payload it runs with in `runs`: the job of most contract tests."""

    def handler(data: Any, ctx: Any) -> None:
        runs.add(data)

    return jobs.define_job(name, handle=handler, payload=payload, **options)


def failing_job(
    jobs: JobRegistry[Any],
    name: str,
    runs: Runs,
    error: Exception | Callable[[int], Exception],
    *,
    failures: int | None = None,
    asynchronous: bool = False,
    **options: Any,
) -> Any:
    """Define in `jobs` a job `name` (a `Note` payload, the job options `options`) that records
    each run in `runs` and raises `error` (or `error(n)` on its n-th run) on every one, or with
    `failures` on the first `failures` runs only, completing after; `asynchronous`: an `async
    def` handler."""

    def handler(payload: Note, ctx: Any) -> None:
        n = runs.add()
        if failures is None or n <= failures:
            raise error(n) if callable(error) else error

    async def async_handler(payload: Note, ctx: Any) -> None:
        handler(payload, ctx)

    handle = async_handler if asynchronous else handler
    return jobs.define_job(name, handle=handle, payload=Note, **options)
