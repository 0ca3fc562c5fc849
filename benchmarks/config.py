"""How big and how long: the sizes and round counts of one benchmark run.

Three modes: the full run (the figures docs/performance.md reports), `--quick` (short rounds:
figures that show where the costs are, in a few minutes) and `--smoke` (tiny sizes, two rounds:
every scenario runs and produces every row, in well under a minute; what the test suite runs,
its figures mean nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

SIZES: dict[str, int] = {"200B": 200, "10KB": 10_000, "200KB": 200_000}
"""The payload sizes every dispatch row is measured at (JSON bytes, approximately)."""

SMALL = "200B"
"""The size of the keyed, batch, worker and end-to-end rows: a typical job's payload."""

Mode = Literal["smoke", "quick", "full"]
MODES: tuple[Mode, ...] = ("smoke", "quick", "full")


@dataclass(frozen=True)
class Config:
    """Sizes and rounds of one benchmark run."""

    mode: Mode
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
    idle_n: int
    """Jobs per side per round of an idle row (one job at a time to an idle worker)."""
    memory_jobs: int
    memory_mark: int
    """RSS growth and time per dispatch are compared from this job on."""
    warmup_n: int
    micro_budget: float
    """CPU seconds each micro-benchmark repeat runs for."""
    small_n: int
    """Operations per round of the in-process scenarios with a fixed count (flow, outbox)."""

    @property
    def quick(self) -> bool:
        """A short run (`--quick` or `--smoke`): no PostgreSQL, no flow worker processes, no
        callgrind."""
        return self.mode != "full"

    @property
    def smoke(self) -> bool:
        """`--smoke`: tiny sizes, every row produced, the figures meaningless."""
        return self.mode == "smoke"

    @classmethod
    def make(cls, mode: Mode | bool = "full", rounds: int | None = None) -> Config:
        """The configuration of `mode` (True: quick, False: full), with `rounds` if given
        (default: 2 smoke, 3 quick, 5 full)."""
        if isinstance(mode, bool):
            mode = "quick" if mode else "full"
        index = MODES.index(mode)
        values = {name: triple[index] for name, triple in SETTINGS.items()}
        return cls(mode=mode, rounds=rounds or (2, 3, 5)[index], **values)

    def n(self, size: str, scale: float = 1.0) -> int:
        """Operations per round at payload `size`, times a backend's `scale`."""
        floor = 4 if self.smoke else 10
        return max(floor, round(self.dispatch_n[size] * scale))


SETTINGS: dict[str, tuple[Any, Any, Any]] = {
    # field: (smoke, quick, full)
    "dispatch_n": (
        {"200B": 10, "10KB": 10, "200KB": 4},
        {"200B": 200, "10KB": 100, "200KB": 20},
        {"200B": 2_000, "10KB": 1_000, "200KB": 200},
    ),
    "slices": (2, 2, 10),
    "batch_n": (20, 200, 1_000),
    "worker_n": (200, 300, 5_000),  # smoke: enough for the workers' CPU, read in 10 ms ticks
    "e2e_n": (200, 200, 3_000),
    "inngest_e2e_n": (5, 60, 600),
    "idle_n": (1, 5, 15),
    "memory_jobs": (600, 20_000, 100_000),
    "memory_mark": (100, 2_000, 10_000),
    "warmup_n": (2, 20, 200),
    "micro_budget": (0.002, 0.02, 0.2),
    "small_n": (100, 1_000, 5_000),
}
"""The smoke run's, the quick run's and the full run's value of each size."""
