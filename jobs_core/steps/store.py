"""Where a run's steps are kept between its deliveries: the `StepStore` port, and its in-process
store (inline; and tests).

A run's records are text under keys the engine chooses (`jobs_core.steps.engine`): a completed
step's output, a step's failed attempts, a sleep's wake-up time. A delivery reads them once
(`load`), writes one record per completed step (`save`: the first writer wins, so two deliveries
of one run that race continue with the same value, C35), and overwrites counters (`put`). When
the run ends, `finish` lets its records go after a retention period.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Protocol

DEFAULT_RETENTION = timedelta(days=7)
"""How long a finished run's records are kept (for a late duplicate delivery, and operators)."""
PURGE_EVERY = 60.0
"""Seconds between two deletions of expired records by one database store."""


class StepStore(Protocol):
    """The records of runs with steps, shared by every worker of the app."""

    def load(self, run_id: str) -> dict[str, str]:
        """Every record of run `run_id` (key -> text); empty for a new run."""
        ...

    def save(self, run_id: str, key: str, value: str) -> str:
        """Store `value` under `key` unless a value is there already; return the stored one."""
        ...

    def put(self, run_id: str, key: str, value: str) -> None:
        """Store `value` under `key`, replacing any value."""
        ...

    def finish(self, run_id: str, retention: timedelta) -> None:
        """The run ended: drop its records after `retention`."""
        ...


class MemoryStepStore:
    """Runs' records in this process (the inline backend's store). A finished run's records
    are dropped after the retention, checked as other runs finish."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, str]] = {}
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()
        from .waits import MemoryWaits

        self.waits = MemoryWaits(self)
        """The runs waiting for an event, in this process."""

    def load(self, run_id: str) -> dict[str, str]:
        with self._lock:
            return dict(self._runs.get(run_id, {}))

    def save(self, run_id: str, key: str, value: str) -> str:
        with self._lock:
            return self._runs.setdefault(run_id, {}).setdefault(key, value)

    def put(self, run_id: str, key: str, value: str) -> None:
        with self._lock:
            self._runs.setdefault(run_id, {})[key] = value

    def forget(self, run_id: str, key: str) -> None:
        with self._lock:
            self._runs.get(run_id, {}).pop(key, None)

    def finish(self, run_id: str, retention: timedelta) -> None:
        now = time.monotonic()
        with self._lock:
            self._expiry[run_id] = now + retention.total_seconds()
            for gone in [r for r, at in self._expiry.items() if at <= now]:
                self._runs.pop(gone, None)
                del self._expiry[gone]

    def __len__(self) -> int:
        return len(self._runs)
