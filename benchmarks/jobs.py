"""The benchmark's job and payloads, shared by the producers, the workers and the baselines.

Every side of every comparison sends the same payload (a plain mapping, as an app would pass
it) and runs the same job body: validate the payload into its model (what a plain task that
wants typed input does, and what jobs_core does for it) and count one completion.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from pydantic import BaseModel

from jobs_core import JobRegistry

from .config import SIZES, SMALL
from .counter import SharedCounter


class Line(BaseModel):
    sku: str
    qty: int
    note: str


class Note(BaseModel):
    """A typical payload: ids, an address and a template name, plus order lines that make the
    larger sizes (a structured payload costs more to validate and serialise than one string)."""

    user_id: int
    email: str
    template: str
    tags: list[str] = []
    lines: list[Line] = []


JOB_NAME = "bench.noop"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def make_payload(size: int) -> dict[str, Any]:
    """A payload whose JSON is about `size` bytes (never much over it)."""
    payload: dict[str, Any] = {
        "user_id": 42,
        "email": "ada@example.com",
        "template": "welcome",
        "tags": ["signup", "eu"],
        "lines": [],
    }
    room = size - len(_json(payload))
    i = 0
    while room > 60:
        line = {"sku": f"SKU-{i:06d}", "qty": 1 + i % 7, "note": ""}
        line["note"] = "x" * max(0, min(60, room - len(_json(line)) - 1))
        payload["lines"].append(line)
        room -= len(_json(line)) + 1
        i += 1
    return payload


PAYLOADS: dict[str, dict[str, Any]] = {name: make_payload(size) for name, size in SIZES.items()}
PAYLOAD_BYTES: dict[str, int] = {name: len(_json(p)) for name, p in PAYLOADS.items()}
SAMPLE = PAYLOADS[SMALL]
"""The typical (200 B) payload, under the name the standalone benchmark scripts use."""


class Hits(Protocol):
    """Counts completed jobs (the job's context)."""

    def hit(self) -> None: ...


COUNTER = SharedCounter.from_env()
"""The worker processes' context: `python -m jobs_core worker ... --context benchmarks.jobs:COUNTER`."""

jobs = JobRegistry[Hits]()


@jobs.job(JOB_NAME)
def noop(payload: Note, ctx: Hits) -> None:
    """The benchmark job: does nothing but count itself."""
    ctx.hit()


def plain_body(data: Any, hits: Hits) -> None:
    """The plain task / actor / function body of every baseline: the same work as `noop` with
    jobs_core (validate the payload into its model, count one completion)."""
    Note.model_validate(data)
    hits.hit()
