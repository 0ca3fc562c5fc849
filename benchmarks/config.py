"""How big and how long: the sizes and round counts of one benchmark run (full or `--quick`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SIZES: dict[str, int] = {"200B": 200, "10KB": 10_000, "200KB": 200_000}
"""The payload sizes every dispatch row is measured at (JSON bytes, approximately)."""

SMALL = "200B"
"""The size of the keyed, batch, worker and end-to-end rows: a typical job's payload."""


@dataclass(frozen=True)
class Config:
    """Sizes and rounds of one benchmark run."""

    quick: bool
    rounds: int
    dispatch_n: Mapping[str, int]
    """Single dispatches per round, by payload size (scaled per backend: inline is faster, the
    Inngest stand-in slower)."""
    slices: int
    """Each round of a dispatch comparison alternates the sides this many times."""
    batch_n: int
    """Jobs per `dispatch_many_sync` call (and per library batch call)."""
    worker_n: int
    """Jobs per round drained by a worker process."""
    e2e_n: int
    """Jobs per round, first dispatch to last completion, through a worker process."""
    inngest_e2e_n: int
    """The same through the Inngest stand-in's executor (a Python HTTP server, ~150 runs/s)."""
    memory_jobs: int
    memory_mark: int
    """RSS growth and time per dispatch are compared from this job on."""
    warmup_n: int
    micro_budget: float
    """CPU seconds each micro-benchmark repeat runs for."""

    @classmethod
    def make(cls, quick: bool, rounds: int | None = None) -> Config:
        values = {name: pair[0 if quick else 1] for name, pair in SETTINGS.items()}
        return cls(quick=quick, rounds=rounds or (3 if quick else 5), **values)

    def n(self, size: str, scale: float = 1.0) -> int:
        """Operations per round at payload `size`, times a backend's `scale`."""
        return max(10, round(self.dispatch_n[size] * scale))


SETTINGS: dict[str, tuple[Any, Any]] = {
    # field: (quick, full)
    "dispatch_n": (
        {"200B": 200, "10KB": 100, "200KB": 20},
        {"200B": 2_000, "10KB": 1_000, "200KB": 200},
    ),
    "slices": (2, 10),
    "batch_n": (200, 1_000),
    "worker_n": (300, 5_000),
    "e2e_n": (200, 3_000),
    "inngest_e2e_n": (60, 600),
    "memory_jobs": (20_000, 100_000),
    "memory_mark": (2_000, 10_000),
    "warmup_n": (20, 200),
    "micro_budget": (0.02, 0.2),
}
"""The quick run's and the full run's value of each size."""
