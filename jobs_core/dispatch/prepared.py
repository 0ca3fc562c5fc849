"""A dispatch the core has validated and serialised, as every backend receives it, and the
dispatch id of a keyed dispatch: what the dispatcher makes, and what a resumed run or an
invoked child is made of too (`jobs_core.steps`), below both."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pydantic_core
from pydantic import BaseModel

from ..jobs.job import Job


@dataclass(frozen=True)
class PreparedJob:
    """A validated dispatch, ready for a backend: `body` is the payload's JSON, serialised
    once; an adapter puts it into its message as it is where its library allows, and uses
    `data` (the same JSON, parsed) where it does not.

    `dispatch_id` is chosen here so that it is known before the enqueue (idempotency records
    it); adapters use it as the task / message id where their library allows.
    """

    job: Job[Any, Any]
    payload: BaseModel
    """The validated payload (equal to the one a worker gets, C10)."""
    body: bytes
    dispatch_id: str
    eta: datetime | None = None
    idempotency_key: str | None = None
    headers: Mapping[str, str] | None = None
    """What hooks (tracing) add to the job's message, besides the payload (`jobs_core.hooks`)."""

    @property
    def name(self) -> str:
        return self.job.name

    @functools.cached_property
    def data(self) -> Any:
        """The payload as JSON-ready data (dicts, lists, str, numbers), parsed from `body`."""
        return pydantic_core.from_json(self.body)

    def delay_seconds(self, now: datetime | None = None) -> float:
        """Seconds from `now` until the job may start (0 when it has no eta or the eta passed)."""
        if self.eta is None:
            return 0.0
        now = now or datetime.now(timezone.utc)
        return max(0.0, (self.eta - now).total_seconds())


def keyed_dispatch_id(job_name: str, idempotency_key: str) -> str:
    """The dispatch id of a keyed dispatch, on every backend: `<job>:<key>`, so the producer
    and the worker name a keyed job alike even where a repeat cannot be detected (C9)."""
    return f"{job_name}:{idempotency_key}"
