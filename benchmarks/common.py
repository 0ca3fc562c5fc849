"""Shared machinery: configuration, interleaved timing, results, polling, worker processes."""

from __future__ import annotations

import gc
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

Side = Callable[[int], float]
"""One side of a comparison: does `n` operations and returns the seconds they took (timed part
only; any setup or cleanup it does around them is left out)."""


@dataclass(frozen=True)
class Config:
    """Sizes and rounds of one benchmark run."""

    quick: bool
    rounds: int
    dispatch_n: int
    """Single dispatches per round in the dispatch-overhead scenario (durable backends)."""
    inline_dispatch_n: int
    """The same for inline, which is much faster."""
    dispatch_slices: int
    """Each round of the dispatch scenario alternates the sides this many times."""
    batch_n: int
    """Jobs per `dispatch_many_sync` call (and single dispatches on the other side)."""
    e2e_n: int
    """Jobs per round, dispatch to completion."""
    inngest_e2e_n: int
    """The same on Inngest, whose stand-in executor (a Python HTTP server, a new connection per
    call) runs ~150 jobs/s here: 5,000 jobs x 2 sides x 5 rounds would take six minutes."""
    memory_jobs: int
    memory_mark: int
    """RSS growth is measured between this job and the last one."""
    warmup_n: int

    @classmethod
    def make(cls, quick: bool, rounds: int | None) -> Config:
        if quick:
            return cls(
                quick=True,
                rounds=rounds or 3,
                dispatch_n=200,
                inline_dispatch_n=1_000,
                dispatch_slices=2,
                batch_n=200,
                e2e_n=300,
                inngest_e2e_n=150,
                memory_jobs=20_000,
                memory_mark=2_000,
                warmup_n=50,
            )
        return cls(
            quick=False,
            rounds=rounds or 5,
            dispatch_n=2_000,
            inline_dispatch_n=5_000,
            dispatch_slices=10,
            batch_n=1_000,
            e2e_n=5_000,
            inngest_e2e_n=1_000,
            memory_jobs=100_000,
            memory_mark=10_000,
            warmup_n=200,
        )


# -- timing -------------------------------------------------------------------------------


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
    """What `interleave` measured: per side, the seconds of each round (wall clock, timed part
    only) and this process's CPU seconds for the same call (setup and cleanup included)."""

    seconds: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def cpu_us_per_op(self, name: str, n: int) -> float:
        return median(self.cpu[name]) / n * 1e6


def interleave(
    sides: Mapping[str, Side],
    n: int,
    rounds: int,
    *,
    warmup_n: int = 0,
    slices: int = 1,
    progress: Callable[[str], None] | None = None,
) -> Timings:
    """Run every side once per round, interleaved (A B, B A, A B, ...); seconds per side.

    The side that goes first rotates from round to round, so that neither side always runs
    right after the other (caches, a worker's idle back-off, the other engineers' load). With
    `slices` > 1 each side's n operations of a round are done as that many shorter runs,
    alternated (A B A B ... within the round) and summed: a burst of load elsewhere on the
    machine then falls on both sides alike. Each side first runs `warmup_n` operations,
    untimed. A full collection runs before each timed run, so one side does not pay for the
    other's garbage. This process's CPU time per side is kept too: a steadier view of the
    client-side cost than the wall clock on a busy machine.
    """
    names = list(sides)
    if warmup_n:
        for name in names:
            sides[name](warmup_n)
    timings = Timings({name: [] for name in names}, {name: [] for name in names})
    samples = timings.seconds
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
            samples[name].append(wall[name])
            timings.cpu[name].append(cpu[name])
        if progress is not None:
            progress(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{name} {n / samples[name][-1]:,.0f}/s" for name in names)
            )
    return timings


def rates(n: int, seconds: Sequence[float]) -> list[float]:
    return [n / s for s in seconds]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(top: Sequence[float], bottom: Sequence[float]) -> float:
    """The median of the per-round ratios top[i] / bottom[i] (rates measured side by side)."""
    return median([a / b for a, b in zip(top, bottom)])


# -- results ------------------------------------------------------------------------------


@dataclass
class Result:
    """One figure of the table: a scenario on a backend.

    `figures` holds the numbers (rates per second, ratios, MiB); `samples` the per-round rates
    they come from. `ratio` is the figure the target is about; `met` says whether it was met
    (None when the scenario has no target on this backend).
    """

    scenario: str
    backend: str
    n: int
    rounds: int
    figures: dict[str, float]
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    scenario: str,
    backend: str,
    n: int,
    timings: Timings,
    top: str,
    bottom: str,
    *,
    target: float | None,
    note: str = "",
) -> Result:
    """A `Result` for two sides timed by `interleave`: medians of each, ratio top/bottom.

    `ratio` is the median of the per-round ratios (each round ran both sides back to back);
    `ratio_of_medians` is also given. `*_cpu_us` is this process's CPU per operation.
    """
    per_s = {name: rates(n, timings.seconds[name]) for name in (top, bottom)}
    ratio = paired_ratio(per_s[top], per_s[bottom])
    figures = {f"{top}_per_s": median(per_s[top]), f"{bottom}_per_s": median(per_s[bottom])}
    figures["ratio"] = ratio
    figures["ratio_of_medians"] = figures[f"{top}_per_s"] / figures[f"{bottom}_per_s"]
    figures[f"{top}_cpu_us"] = timings.cpu_us_per_op(top, n)
    figures[f"{bottom}_cpu_us"] = timings.cpu_us_per_op(bottom, n)
    return Result(
        scenario=scenario,
        backend=backend,
        n=n,
        rounds=len(per_s[top]),
        figures=figures,
        ratio=ratio,
        target=None if target is None else f"{top}/{bottom} >= {target:g}",
        met=None if target is None else ratio >= target,
        samples={name: [round(r, 1) for r in v] for name, v in per_s.items()},
        note=note,
    )


def floor_result(backend: str, n: int, timings: Timings) -> Result:
    """The floor: raw redis-py LPUSH of the same bytes; each side's rate as a fraction of it."""
    per_s = {name: rates(n, s) for name, s in timings.seconds.items()}
    figures = {
        "lpush_cpu_us": timings.cpu_us_per_op("lpush", n),
        "lpush_per_s": median(per_s["lpush"]),
        "ours_per_s": median(per_s["ours"]),
        "raw_per_s": median(per_s["raw"]),
        "ours_fraction": paired_ratio(per_s["ours"], per_s["lpush"]),
        "raw_fraction": paired_ratio(per_s["raw"], per_s["lpush"]),
    }
    return Result(
        scenario="floor",
        backend=backend,
        n=n,
        rounds=len(per_s["lpush"]),
        figures=figures,
        ratio=figures["ours_fraction"],
        samples={name: [round(r, 1) for r in v] for name, v in per_s.items()},
        note="LPUSH of the bytes this backend enqueues, one redis-py connection",
    )


# -- waiting and processes ----------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 0.002,
    check: Callable[[], str | None] | None = None,
) -> None:
    """Poll `predicate` until it holds; raise TimeoutError naming `what` after `timeout` s.

    `check` is called on every poll: a returned message (a worker died) fails the wait at once.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        problem = check() if check is not None else None
        if problem:
            raise RuntimeError(f"while waiting for {what}: {problem}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def e2e_deadline(n: int) -> float:
    """Seconds allowed for `n` jobs to complete: generous (a loaded machine), never endless."""
    return 60.0 + n / 50.0


class WorkerProcess:
    """A worker subprocess in its own process group, with its output in a temporary file.

    `stop()` sends SIGTERM to the group, waits (bounded), then SIGKILLs it; it is safe to call
    more than once. Use it as a context manager so that the process is stopped on any exit.
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float | None:
        """CPU seconds the worker process (all its threads) has used so far, if known."""
        return None if self.process is None else process_cpu_seconds(self.process.pid)

    def output(self, limit: int = 4000) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-limit:]

    def stop(self, grace: float = 15.0) -> None:
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    process.wait(grace)
        finally:
            if self.log is not None:
                self.log.close()
                self.log = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid`, from /proc (Linux); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name: field 3 onwards
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CounterSide:
    """One side of an end-to-end comparison through a worker process.

    A call dispatches n jobs one by one with `send()`, then polls the Redis counter `key` (the
    side's handler INCRs it) until all n completed, with a deadline; it returns the seconds from
    the first dispatch to the last completion. The counter is reset before each call, and a
    count other than n (a job lost or run twice) is an error. The worker's CPU time per call is
    kept in `worker_cpu` (the first call is the warm-up).
    """

    def __init__(
        self,
        client: Any,
        key: str,
        send: Callable[[], object],
        worker: WorkerProcess,
        backend: str,
        *,
        first_timeout: float = 60.0,
    ) -> None:
        self.client = client
        self.key = key
        self.send = send
        self.worker = worker
        self.backend = backend
        self.first_timeout = first_timeout
        self.check = worker_check(worker, backend)
        self.worker_cpu: list[float] = []
        self.calls = 0

    def count(self) -> int:
        value = self.client.get(self.key)
        return int(value) if value is not None else 0

    def __call__(self, n: int) -> float:
        self.calls += 1
        self.client.delete(self.key)
        send = self.send
        cpu_before = self.worker.cpu_seconds()
        start = time.perf_counter()
        for _ in range(n):
            send()
        wait_until(
            lambda: self.count() >= n,
            e2e_deadline(n) + (self.first_timeout if self.calls == 1 else 0.0),
            f"{n} {self.backend} jobs ({self.key})",
            check=self.check,
        )
        elapsed = time.perf_counter() - start
        cpu_after = self.worker.cpu_seconds()
        if cpu_before is not None and cpu_after is not None:
            self.worker_cpu.append(cpu_after - cpu_before)
        done = self.count()
        if done != n:
            raise RuntimeError(f"{self.backend}: {done} completions counted for {n} jobs")
        return elapsed

    def worker_cpu_us(self, n: int, rounds: int) -> float | None:
        """Median worker CPU per job over the timed rounds (microseconds), if measured."""
        timed_rounds = self.worker_cpu[-rounds:]
        if len(timed_rounds) < rounds or median(timed_rounds) <= 0:
            return None  # no /proc, or rounds shorter than the clock tick
        return median(timed_rounds) / n * 1e6


def add_worker_cpu(result: Result, sides: Mapping[str, CounterSide]) -> Result:
    """Add each side's worker CPU per job to an end-to-end `Result` (where /proc has it)."""
    for name, side in sides.items():
        value = side.worker_cpu_us(result.n, result.rounds)
        if value is not None:
            result.figures[f"{name}_worker_cpu_us"] = value
    return result


def worker_check(worker: WorkerProcess, what: str) -> Callable[[], str | None]:
    """A `check` for `wait_until`: fails the wait at once if the worker process exited."""

    def check() -> str | None:
        if worker.alive():
            return None
        return f"the {what} worker exited; its output:\n{worker.output()}"

    return check


@dataclass
class Env:
    """What every backend module gets: the run's configuration, broker and progress log."""

    config: Config
    redis_url: str
    log: Callable[[str], None]

    def redis_client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=5, socket_timeout=30)


def lpush_side(client: Any, key: str, data: bytes) -> Side:
    """The floor: `LPUSH key data`, n times, over the client's one connection."""

    def side(n: int) -> float:
        push = client.lpush
        return timed(n, lambda _: push(key, data), after=lambda: client.delete(key))

    return side
