"""Interleaved timing: every side of a comparison runs once per round, side by side.

The machine is shared and noisy, so two sides are never timed minutes apart: each round runs
all of them back to back, the side that goes first rotates from round to round, and a round
may be cut into slices (A B A B ... within the round) so that a burst of load elsewhere falls
on every side alike. What a row reports is then the median and the range of the per-round
ratios, which cancel most of the load that both sides of one round shared.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Side = Callable[[int], float]
"""One side of a comparison: does `n` operations and returns the seconds they took (the timed
part only; any setup or cleanup around them is left out)."""


def timed(n: int, op: Callable[[int], object], after: Callable[[], object] | None = None) -> float:
    """Call `op(i)` for i in range(n) and return the seconds taken; then `after()` (untimed)."""
    start = time.perf_counter()
    for i in range(n):
        op(i)
    elapsed = time.perf_counter() - start
    if after is not None:
        after()
    return elapsed


@dataclass
class Timings:
    """What `interleave` measured, per side and per round: the seconds the side reported and
    this process's CPU seconds for the same calls (its setup and cleanup included)."""

    n: int
    seconds: dict[str, list[float]]
    cpu: dict[str, list[float]]

    @property
    def rounds(self) -> int:
        return len(next(iter(self.seconds.values())))

    def rates(self, side: str) -> list[float]:
        return [self.n / s for s in self.seconds[side]]

    def ratios(self, top: str, bottom: str) -> list[float]:
        """Per round: top's rate over bottom's (both measured in that round)."""
        return [b / t for t, b in zip(self.seconds[top], self.seconds[bottom])]

    def cpu_us(self, side: str) -> list[float]:
        """Per round: this process's CPU microseconds per operation of `side`."""
        return [c / self.n * 1e6 for c in self.cpu[side]]


def interleave(
    sides: Mapping[str, Side],
    n: int,
    rounds: int,
    *,
    warmup_n: int = 0,
    slices: int = 1,
    progress: Callable[[str], None] | None = None,
) -> Timings:
    """Run every side once per round, interleaved, the side going first rotating each round.

    With `slices` > 1 each side's n operations of a round are done as that many shorter runs,
    alternated and summed. Each side first runs `warmup_n` operations, untimed. A full
    collection runs before each timed run, so one side does not pay for the other's garbage.
    """
    names = list(sides)
    if warmup_n:
        for name in names:
            sides[name](warmup_n)
    timings = Timings(n, {name: [] for name in names}, {name: [] for name in names})
    sizes = [n // slices + (1 if i < n % slices else 0) for i in range(slices)]
    for r in range(rounds):
        wall = dict.fromkeys(names, 0.0)
        cpu = dict.fromkeys(names, 0.0)
        for i, size in enumerate(sizes):
            k = (r + i) % len(names)
            for name in names[k:] + names[:k]:
                gc.collect()
                cpu_start = time.process_time()
                wall[name] += sides[name](size)
                cpu[name] += time.process_time() - cpu_start
        for name in names:
            timings.seconds[name].append(wall[name])
            timings.cpu[name].append(cpu[name])
        if progress is not None:
            progress(
                f"  round {r + 1}/{rounds}: "
                + ", ".join(f"{name} {n / wall[name]:,.0f}/s" for name in names)
            )
    return timings


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 0.001,
    check: Callable[[], str | None] | None = None,
) -> float:
    """Poll `predicate` until it holds and return the time (perf_counter) it was seen to.

    Raises TimeoutError naming `what` after `timeout` seconds; `check` is called on every poll,
    and a message it returns (a worker died) fails the wait at once.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        problem = check() if check is not None else None
        if problem:
            raise RuntimeError(f"while waiting for {what}: {problem}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.perf_counter()


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def paired_ratio(top: Sequence[float], bottom: Sequence[float]) -> float:
    """The median of the per-round ratios top[i] / bottom[i] (values measured side by side)."""
    return median([a / b for a, b in zip(top, bottom)])
