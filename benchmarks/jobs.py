"""The benchmark's job, payload and completion counters, shared by producers and workers.

Both sides of every comparison send the same payload (`SAMPLE`, a plain mapping as an app
would pass it) and run the same handler body: one `hit()` on the context, which in the worker
processes is a Redis `INCR` of a per-side counter (how the producer sees completions).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import redis
from pydantic import BaseModel

from jobs_core import JobRegistry


class Note(BaseModel):
    """A small, typical payload: an id, an address, a template name and a few tags."""

    user_id: int
    email: str
    template: str
    tags: list[str] = []


SAMPLE: dict[str, Any] = {
    "user_id": 42,
    "email": "ada@example.com",
    "template": "welcome",
    "tags": ["signup", "eu"],
}
SAMPLE_JSON = json.dumps(SAMPLE, separators=(",", ":")).encode()

JOB_NAME = "bench.noop"
RAW_NAME = "bench.raw"
"""The plain (non-jobs_core) task / actor / function of the end-to-end comparison."""


class Hits(Protocol):
    """Counts completed jobs."""

    def hit(self) -> None: ...


class LocalHits:
    """In-process counter (inline)."""

    def __init__(self) -> None:
        self.count = 0

    def hit(self) -> None:
        self.count += 1


class RedisHits:
    """`INCR key` per completed job (worker processes)."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    def hit(self) -> None:
        self.client.incr(self.key)


def counter_keys(queue: str) -> tuple[str, str]:
    """The Redis counters of our job and of the raw one, for the workers of `queue`."""
    return f"bench:{queue}:done:ours", f"bench:{queue}:done:raw"


jobs = JobRegistry[Hits]()


@jobs.job(JOB_NAME)
def noop(payload: Note, ctx: Hits) -> None:
    """The benchmark job: does nothing but count itself."""
    ctx.hit()
