"""The steps of runs in Redis: one hash per run (Celery and Dramatiq on a Redis broker, or any
worker given `JOBS_STEP_STORE_URL=redis://...`).

A delivery reads its run's hash once (`HGETALL`); a completed step is one round trip
(`HSETNX` and `HGET` in one transaction: the first writer's value comes back to every writer);
when the run ends the hash expires after the retention period.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .waits import RedisWaits

KEY_PREFIX = "jobs:steps:"


class RedisStepStore:
    """`StepStore` on a redis-py client (jobs_core imports no broker library: the client is
    given, or made from a URL by `jobs_core.steps.stores`)."""

    def __init__(self, client: Any, prefix: str = KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.waits = RedisWaits(client, prefix)
        """The runs waiting for an event, in the same Redis."""

    def load(self, run_id: str) -> dict[str, str]:
        found = self.client.hgetall(self.prefix + run_id)
        return {_text(k): _text(v) for k, v in found.items()}

    def save(self, run_id: str, key: str, value: str) -> str:
        name = self.prefix + run_id
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(name, key, value)
            pipe.hget(name, key)
            _, kept = pipe.execute()
        return _text(kept)

    def put(self, run_id: str, key: str, value: str) -> None:
        self.client.hset(self.prefix + run_id, key, value)

    def finish(self, run_id: str, retention: timedelta) -> None:
        self.client.expire(self.prefix + run_id, max(1, int(retention.total_seconds())))

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisStepStore({self.client!r})"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
