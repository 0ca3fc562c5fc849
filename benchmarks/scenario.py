"""What a scenario module is, and which ones `python -m benchmarks` runs.

A scenario module has two functions:

- `rows(config: Config) -> list[str]`: the ids of the rows it produces (the test checks that a
  run produced every one of them);
- `run(env: Env) -> list[Row]`: measures them.

A module that cannot be imported (a library it needs is not installed) is skipped, and the
run says why. To add one (as `benchmarks/outbox_bench.py` was), give it these two functions and
add a line to `MODULES`: it then runs with the others, prints its rows in the table, writes its
samples into the JSON and is checked by `tests/test_benchmarks.py`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .config import Config

MODULES: dict[str, str] = {
    "micro": "benchmarks.micro",
    "memory": "benchmarks.memory",
    "inline": "benchmarks.inline_bench",
    "celery": "benchmarks.celery_bench",
    "dramatiq": "benchmarks.dramatiq_bench",
    "inngest": "benchmarks.inngest_bench",
    "flow": "benchmarks.flow_bench",
    "outbox": "benchmarks.outbox_bench",
    "steps": "benchmarks.steps_bench",
    "events": "benchmarks.events_bench",
    "otel": "benchmarks.otel_bench",
    "constructs": "benchmarks.constructs",
}
"""Scenario name (what `--only` takes) -> module, in the order they run."""


@dataclass
class Env:
    """What every scenario gets: the run's configuration, a private Redis and a progress log."""

    config: Config
    redis_url: str
    log: Callable[[str], None]

    def redis_client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=5, socket_timeout=30)


def missing_requirement(name: str) -> str | None:
    """Why scenario `name` cannot run here (it, or a library it needs, will not import)."""
    try:
        load(name)
    except ImportError as error:
        return f"not available: {error}"
    return None


def load(name: str) -> ModuleType:
    return importlib.import_module(MODULES[name])
