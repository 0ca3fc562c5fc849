"""Memory scenario: peak RSS while dispatching and running many inline jobs, and RSS growth.

Run in a fresh process (`python -m benchmarks.memory --jobs N --mark M`) so that the figures are
those of jobs_core alone, not of everything the benchmark process imported before; it prints
one JSON object. RSS comes from /proc/self/status (VmRSS, VmHWM), else from getrusage (peak
only).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from .common import PYTHON, Env, Result, WorkerProcess, wait_until

MIB = 1024 * 1024
GROWTH_TARGET_MIB = 5.0


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size (falls back to the peak where /proc is missing)."""
    kib = _status_kib("VmRSS")
    if kib is None:
        return peak_rss_bytes()
    return kib * 1024


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


def measure(jobs: int, mark: int, keyed: bool = False) -> dict[str, Any]:
    """Dispatch `jobs` inline jobs one by one (each runs before `dispatch_sync` returns), with a
    new idempotency key each when `keyed`; the time per dispatch of the `mark` jobs after the
    first `mark` and of the last `mark` shows whether it stays flat."""
    from jobs_core.backends.inline import InlineDispatcher

    from .jobs import SAMPLE, LocalHits, noop

    hits = LocalHits()
    dispatcher = InlineDispatcher(context=hits)
    dispatch = dispatcher.dispatch_sync
    start = rss_bytes()
    at_mark = start
    clock: dict[int, float] = {}
    for i in range(1, jobs + 1):
        if keyed:
            dispatch(noop, SAMPLE, idempotency_key=f"order-{i}")
        else:
            dispatch(noop, SAMPLE)
        if i in (mark, 2 * mark, jobs - mark, jobs):
            clock[i] = time.perf_counter()
        if i == mark:
            at_mark = rss_bytes()
    end = rss_bytes()
    if hits.count != jobs:
        raise RuntimeError(f"{hits.count} of {jobs} inline jobs ran")
    return {
        "jobs": jobs,
        "mark": mark,
        "rss_start_mib": start / MIB,
        "rss_at_mark_mib": at_mark / MIB,
        "rss_end_mib": end / MIB,
        "peak_rss_mib": peak_rss_bytes() / MIB,
        "growth_mib": (end - at_mark) / MIB,
        "us_per_dispatch_early": (clock[2 * mark] - clock[mark]) / mark * 1e6,
        "us_per_dispatch_late": (clock[jobs] - clock[jobs - mark]) / mark * 1e6,
    }


def run(env: Env) -> Result:
    """Run `measure` in a fresh interpreter and turn its output into a `Result`."""
    config = env.config
    worker = WorkerProcess(
        [
            PYTHON,
            "-m",
            "benchmarks.memory",
            "--jobs",
            str(config.memory_jobs),
            "--mark",
            str(config.memory_mark),
        ]
    )
    with worker:
        process = worker.process
        assert process is not None
        wait_until(lambda: process.poll() is not None, 300, "the memory scenario", interval=0.05)
        output = worker.output(limit=100_000)
        if process.returncode != 0:
            raise RuntimeError(f"the memory scenario failed:\n{output}")
    figures: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    growth = figures["growth_mib"]
    return Result(
        scenario="memory",
        backend="inline",
        n=config.memory_jobs,
        rounds=1,
        figures=figures,
        ratio=None,
        target=f"growth < {GROWTH_TARGET_MIB:g} MiB",
        met=growth < GROWTH_TARGET_MIB,
        note=f"RSS growth from job {config.memory_mark:,} to job {config.memory_jobs:,}, "
        "in a fresh process; peak = its VmHWM",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--mark", type=int, default=10_000)
    parser.add_argument("--keyed", action="store_true", help="a new idempotency key each")
    args = parser.parse_args(argv)
    if not 0 < 2 * args.mark <= args.jobs:
        parser.error("need 0 < 2 * --mark <= --jobs")
    print(json.dumps(measure(args.jobs, args.mark, args.keyed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
