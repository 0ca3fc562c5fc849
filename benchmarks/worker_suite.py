"""The worker rows: jobs_core's documented worker command against a plain worker.

Two worker processes run side by side for the whole scenario, each on its own queue and with
its own completion counter: ours is `python -m jobs_core worker` (its default logging), the
plain one is the library's own command on a plain task or actor (the library's default
logging), both with the same pool and 8 threads.

- `worker`: the drain rate of no-op jobs. Each round stages n jobs where the worker cannot see
  them, makes them visible with one atomic Redis command (RENAME), and times from the first
  completion to the last, so the worker's idle back-off before the first job is not counted.
- `e2e`: n jobs dispatched one by one as each side's app dispatches them, from the first
  dispatch to the last completion.
- `idle`: one job sent to a worker that has been idle for the kit's `idle_pause`, from the
  dispatch to its completion (what a quiet app waits for each job), `idle_n` jobs a side a
  round, the sides taking turns; the figure is ours / plain of the median latencies, per round
  (lower is better). A kit's `idle_env` restarts both workers with those settings for the idle
  rows only (Dramatiq: a 10 ms idle poll, so that the poll's phase, which both sides share,
  does not swamp what the row is about). A kit's `opt_in` side (a third worker, such as
  Celery's reliable Redis transport) gets an idle row of its own.

Besides the rates, each row keeps each worker process group's CPU time per job (/proc) and how
many bytes of log it wrote per job.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .counter import ENV, SharedCounter
from .processes import WorkerProcess
from .results import RATIO, Row, compare, lower_is_better
from .scenario import Env
from .timing import Timings, interleave, median, wait_until

STARTUP_TIMEOUT = 120.0
"""Seconds a worker may take to start and run its first job (imports on a loaded machine)."""
IDLE_TARGET = 1.5
"""An idle row: ours may take at most this many times the plain worker's latency."""


def deadline(n: int) -> float:
    """Seconds allowed for `n` jobs to complete: generous (a loaded machine), never endless."""
    return 60.0 + n / 50.0


@dataclass(eq=False)
class Completions:
    """Times n completions of one side, counted by `counter`; with a worker process, also
    records its CPU seconds and log bytes per call (the first call is the warm-up)."""

    counter: SharedCounter
    what: str
    check: Callable[[], str | None] | None = None
    worker: WorkerProcess | None = None
    counter_path: Path | None = None
    """The counter's file, which a restarted worker process opens again."""
    calls: int = field(default=0, init=False)
    worker_cpu: list[float] = field(default_factory=list, init=False)
    log_bytes: list[int] = field(default_factory=list, init=False)

    def _wait(self, before: int, count: int, timeout: float) -> float:
        total = self.counter.total
        return wait_until(
            lambda: total() - before >= count,
            timeout,
            f"{count} {self.what} jobs",
            check=self.check,
        )

    def _timeout(self, n: int) -> float:
        self.calls += 1
        return deadline(n) + (STARTUP_TIMEOUT if self.calls == 1 else 0.0)

    def _usage(self) -> tuple[float | None, int]:
        if self.worker is None:
            return None, 0
        return self.worker.cpu_seconds(), self.worker.log_size()

    def _record(self, n: int, before: int, usage: tuple[float | None, int]) -> None:
        done = self.counter.total() - before
        if done != n:
            raise RuntimeError(f"{self.what}: {done} completions counted for {n} jobs")
        cpu, log = self._usage()
        if cpu is not None and usage[0] is not None:
            self.worker_cpu.append(cpu - usage[0])
        self.log_bytes.append(log - usage[1])

    def e2e(self, send: Callable[[], object], n: int) -> float:
        """Send n jobs one by one; seconds from the first send to the last completion."""
        timeout = self._timeout(n)
        before, usage = self.counter.total(), self._usage()
        start = time.perf_counter()
        for _ in range(n):
            send()
        last = self._wait(before, n, timeout)
        self._record(n, before, usage)
        return last - start

    def drain(self, stage: Callable[[int], object], release: Callable[[], object], n: int) -> float:
        """Stage n jobs, release them at once; seconds a drain of n takes at the rate seen
        from the first completion to the last."""
        timeout = self._timeout(n)
        stage(n)
        before, usage = self.counter.total(), self._usage()
        released = time.perf_counter()
        release()
        first = self._wait(before, 1, timeout)
        seen = self.counter.total() - before
        last = self._wait(before, n, timeout)
        self._record(n, before, usage)
        if seen >= n or last <= first:
            return last - released
        return (last - first) * n / (n - seen)


@dataclass
class WorkerSide:
    """One side of the worker rows: its worker command and how its app sends jobs."""

    label: str
    command: list[str]
    env: dict[str, str]
    stage: Callable[[int], object]
    """Put n jobs on the broker where this side's worker does not see them yet."""
    release: Callable[[], object]
    """Make the staged jobs visible to the worker at once."""
    send: Callable[[], object]
    """One dispatch, the way this side's app dispatches (the e2e row)."""


@dataclass
class WorkerKit:
    backend: str
    ours: WorkerSide
    plain: WorkerSide
    describe: str
    """What both workers are: pool, threads, logging (the rows' `compares`)."""
    worker_target: float | None = None
    e2e_target: float | None = None
    idle_target: float | None = IDLE_TARGET
    idle_pause: float = 0.3
    """Seconds a worker sits idle before each job of the idle rows (past its longest poll)."""
    idle_env: dict[str, str] = field(default_factory=dict)
    """Settings both workers are restarted with for the idle rows (none: no restart)."""
    opt_in: tuple[str, WorkerSide] | None = None
    """(row suffix, side): an opt-in configuration of ours, measured in the idle row only."""
    closers: list[Callable[[], object]] = field(default_factory=list)


def add_worker_figures(row: Row, sides: dict[str, Completions], rounds: int) -> Row:
    """Each worker's CPU µs per job and log bytes per job over the timed rounds."""
    for name, side in sides.items():
        cpu = [c / row.n * 1e6 for c in side.worker_cpu[-rounds:]]
        if len(cpu) == rounds and min(cpu) > 0:
            row.figures[f"{name}_worker_cpu_us"] = median(cpu)
            row.samples[f"{name}_worker_cpu_us"] = cpu
        logs = [b / row.n for b in side.log_bytes[-rounds:]]
        row.figures[f"{name}_log_bytes_per_job"] = median(logs)
    ours, plain = (row.figures.get(f"{s}_worker_cpu_us") for s in sides)
    if ours is not None and plain is not None:
        row.cpu = f"worker {ours:,.0f} / {plain:,.0f} ({ours - plain:+,.0f})"
    logs = [row.figures[f"{s}_log_bytes_per_job"] for s in sides]
    row.cpu += f"; log {logs[0]:,.0f} / {logs[1]:,.0f} B/job"
    return row


def worker_rows(env: Env, kit: WorkerKit) -> list[Row]:
    config, b = env.config, kit.backend
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
        workers: dict[str, WorkerProcess] = {}
        sides: dict[str, Completions] = {}
        all_sides = [("ours", kit.ours), ("plain", kit.plain)]
        if kit.opt_in is not None:
            all_sides.append(("opt_in", kit.opt_in[1]))
        try:
            for name, side in all_sides:
                path = Path(tmp, f"{name}.counter")
                counter = SharedCounter(path, create=True)
                workers[name] = WorkerProcess(side.command, {**side.env, ENV: str(path)}).start()
                sides[name] = Completions(
                    counter, f"{b} {name}", workers[name].check, workers[name], path
                )
            for scenario, what, make, n, target in (
                ("worker", "drain rate", _drainer, config.worker_n, kit.worker_target),
                ("e2e", "first dispatch to last completion", _sender, config.e2e_n, kit.e2e_target),
            ):
                env.log(f"{b}: {scenario} ({what}), {n:,} x {config.rounds}")
                timings = interleave(
                    {
                        name: make(sides[name], side)
                        for name, side in (("ours", kit.ours), ("plain", kit.plain))
                    },
                    n,
                    config.rounds,
                    warmup_n=config.warmup_n,
                    progress=env.log,
                )
                pair = {name: sides[name] for name in ("ours", "plain")}
                rows.append(_row(f"{b}.{scenario}", what, kit, timings, pair, target))
            if kit.idle_env:
                _restart(env, kit, workers, sides)
            plain = (sides["plain"], kit.plain.send)
            rows.append(
                idle_row(
                    env,
                    f"{b}.idle",
                    f"{kit.ours.label} vs {kit.plain.label}; {kit.describe}{_idle_how(kit)}",
                    (sides["ours"], kit.ours.send),
                    plain,
                    kit.idle_pause,
                    kit.idle_target,
                )
            )
            if kit.opt_in is not None:
                suffix, side = kit.opt_in
                rows.append(
                    idle_row(
                        env,
                        f"{b}.idle.{suffix}",
                        f"{side.label} vs {kit.plain.label}; {kit.describe}{_idle_how(kit)}",
                        (sides["opt_in"], side.send),
                        plain,
                        kit.idle_pause,
                        kit.idle_target,
                    )
                )
        finally:
            for worker in workers.values():
                worker.stop()
            for side in sides.values():
                side.counter.close()
            for close in kit.closers:
                close()
    return rows


def _idle_how(kit: WorkerKit) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in kit.idle_env.items())
    restarted = f"; both restarted with {settings} for this row" if settings else ""
    return f"; {kit.idle_pause * 1000:.0f} ms idle before each job{restarted}"


def _restart(
    env: Env, kit: WorkerKit, workers: dict[str, WorkerProcess], sides: dict[str, Completions]
) -> None:
    """Restart ours and the plain worker with `kit.idle_env` (stopped first, then started
    together); each one's next job is a warm-up with the start-up allowance."""
    env.log(f"{kit.backend}: restarting both workers with {kit.idle_env} for the idle rows")
    pairs = (("ours", kit.ours), ("plain", kit.plain))
    for name, _ in pairs:
        workers[name].stop()
    for name, side in pairs:
        completions = sides[name]
        path = str(completions.counter_path)
        worker = WorkerProcess(side.command, {**side.env, ENV: path, **kit.idle_env}).start()
        workers[name] = completions.worker = worker
        completions.check = worker.check
        completions.calls = 0


Idler = tuple[Completions, Callable[[], object]]
"""One side of an idle row: its completions and how it sends one job."""


def idle_row(
    env: Env,
    row_id: str,
    compares: str,
    ours: Idler,
    plain: Idler,
    pause: float,
    target: float | None = IDLE_TARGET,
) -> Row:
    """One job at a time to an idle worker, ours against plain, in turns (the side going first
    alternating): `env.config.idle_n` jobs a side a round, `pause` seconds idle before each;
    per round, ours / plain of the median latencies."""
    n, rounds = env.config.idle_n, env.config.rounds
    env.log(f"{row_id}: one job to an idle worker, {n} a side x {rounds}")
    ratios: list[float] = []
    latency: dict[str, list[float]] = {"ours_ms": [], "plain_ms": []}
    sides = (("ours_ms", *ours), ("plain_ms", *plain))
    for _, completions, send in sides:  # warm-up: a worker's first job pays for its connections
        completions.e2e(send, 1)
    for _ in range(rounds):
        per_side: dict[str, list[float]] = {"ours_ms": [], "plain_ms": []}
        for i in range(n):
            for key, completions, send in sides if i % 2 == 0 else sides[::-1]:
                time.sleep(pause)  # the worker goes idle: that is what is measured
                per_side[key].append(completions.e2e(send, 1) * 1000)
        ratios.append(median(per_side["ours_ms"]) / median(per_side["plain_ms"]))
        for key, values in per_side.items():
            latency[key].extend(values)
    ours_ms, plain_ms = median(latency["ours_ms"]), median(latency["plain_ms"])
    ours_range = f"[{min(latency['ours_ms']):.1f}-{max(latency['ours_ms']):.1f}]"
    plain_range = f"[{min(latency['plain_ms']):.1f}-{max(latency['plain_ms']):.1f}]"
    return lower_is_better(
        ratios,
        row_id,
        f"one job sent to an idle worker, dispatch to completion: {compares}",
        f"{ours_ms:.1f} ms {ours_range}",
        f"plain {plain_ms:.1f} ms {plain_range}",
        n,
        RATIO,
        latency,
        target=target,
    )


def _drainer(completions: Completions, side: WorkerSide) -> Callable[[int], float]:
    return lambda n: completions.drain(side.stage, side.release, n)


def _sender(completions: Completions, side: WorkerSide) -> Callable[[int], float]:
    return lambda n: completions.e2e(side.send, n)


def _row(
    row_id: str,
    what: str,
    kit: WorkerKit,
    timings: Timings,
    sides: dict[str, Completions],
    target: float | None,
) -> Row:
    row = compare(
        row_id,
        f"{what} of no-op jobs: {kit.ours.label} vs {kit.plain.label}; {kit.describe}",
        timings,
        "ours",
        "plain",
        target=target,
        labels=("", "plain"),
    )
    return add_worker_figures(row, sides, timings.rounds)


def row_ids(backend: str, opt_in: str | None = None) -> Sequence[str]:
    ids = [f"{backend}.worker", f"{backend}.e2e", f"{backend}.idle"]
    return [*ids, f"{backend}.idle.{opt_in}"] if opt_in else ids
