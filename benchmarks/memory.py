"""Memory rows: many inline dispatches in a fresh process, without and with idempotency keys.

`python -m benchmarks.memory --jobs N --mark M [--keyed]` dispatches N inline jobs one by one
(each runs before `dispatch_sync` returns; with `--keyed`, a new idempotency key each) and
prints one JSON object: RSS at job M and at the end (from /proc/self/status, else getrusage),
and the CPU time per dispatch of jobs M..2M and of the last M. Nothing is kept per job (the
in-process key store is bounded), so RSS must stay flat and so must the time per dispatch.
Each round is a fresh process, so the figures are those of jobs_core alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from .config import SMALL, Config
from .processes import PYTHON, WorkerProcess
from .results import MIB, RATIO, Row, lower_is_better
from .scenario import Env
from .timing import median, wait_until

MIB_BYTES = 1024 * 1024
TIME_TARGET = 1.2
"""The last jobs may take at most this many times the CPU per dispatch of the early ones (a
ratio measured in one process: the growth rows, in MiB, have no target and explain it)."""
VARIANTS = {"": False, ".keyed": True}


def rows(config: Config) -> list[str]:
    return [f"inline.memory{v}{t}" for v in VARIANTS for t in ("", ".time")]


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


def rss_bytes() -> int:
    """Current resident set size (the peak where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return peak_rss_bytes() if kib is None else kib * 1024


def measure(jobs: int, mark: int, keyed: bool = False) -> dict[str, Any]:
    """Dispatch `jobs` inline jobs; RSS and CPU time per dispatch early and late."""
    from jobs_core.backends.inline import InlineDispatcher

    from .counter import SharedCounter
    from .jobs import PAYLOADS, noop

    hits = SharedCounter()
    dispatcher = InlineDispatcher(context=hits)
    dispatch, payload = dispatcher.dispatch_sync, PAYLOADS[SMALL]
    checkpoints = {mark, 2 * mark, jobs - mark, jobs}
    cpu: dict[int, float] = {}
    rss_at_mark = start = rss_bytes()
    for i in range(1, jobs + 1):
        if keyed:
            dispatch(noop, payload, idempotency_key=f"order-{i}")
        else:
            dispatch(noop, payload)
        if i in checkpoints:
            cpu[i] = time.process_time()
            if i == mark:
                rss_at_mark = rss_bytes()
    end = rss_bytes()
    if hits.total() != jobs:
        raise RuntimeError(f"{hits.total()} of {jobs} inline jobs ran")
    early = (cpu[2 * mark] - cpu[mark]) / mark * 1e6
    late = (cpu[jobs] - cpu[jobs - mark]) / mark * 1e6
    return {
        "jobs": jobs,
        "mark": mark,
        "rss_start_mib": start / MIB_BYTES,
        "rss_at_mark_mib": rss_at_mark / MIB_BYTES,
        "rss_end_mib": end / MIB_BYTES,
        "peak_rss_mib": peak_rss_bytes() / MIB_BYTES,
        "growth_mib": (end - rss_at_mark) / MIB_BYTES,
        "cpu_us_early": early,
        "cpu_us_late": late,
        "late_over_early": late / early,
    }


def _one_process(config: Config, keyed: bool) -> dict[str, Any]:
    args = [PYTHON, "-m", "benchmarks.memory", "--jobs", str(config.memory_jobs)]
    args += ["--mark", str(config.memory_mark)] + (["--keyed"] if keyed else [])
    with WorkerProcess(args) as worker:
        process = worker.process
        assert process is not None
        wait_until(lambda: process.poll() is not None, 600, "the memory scenario", interval=0.05)
        output = worker.output(limit=100_000)
        if process.returncode != 0:
            raise RuntimeError(f"the memory scenario failed:\n{output}")
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def run(env: Env) -> list[Row]:
    config, result = env.config, []
    for variant, keyed in VARIANTS.items():
        what = "with a new idempotency key each" if keyed else "without keys"
        env.log(f"inline: memory {what}, {config.memory_jobs:,} jobs x {config.rounds}")
        runs = [_one_process(config, keyed) for _ in range(config.rounds)]
        samples = {k: [r[k] for r in runs] for k in runs[0] if isinstance(runs[0][k], float)}
        mark, jobs = config.memory_mark, config.memory_jobs
        kinds = (
            (
                "",
                "growth_mib",
                MIB,
                None,
                f"RSS growth from job {mark:,} to job {jobs:,}",
                f"peak {median(samples['peak_rss_mib']):.1f} MiB",
                f"RSS at job {mark:,} {median(samples['rss_at_mark_mib']):.1f} MiB",
            ),
            (
                ".time",
                "late_over_early",
                RATIO,
                TIME_TARGET,
                f"CPU time per dispatch of the last {mark:,} jobs over jobs {mark:,} to "
                f"{2 * mark:,} (flat: nothing grows with the jobs done)",
                f"late {median(samples['cpu_us_late']):.1f} µs",
                f"early {median(samples['cpu_us_early']):.1f} µs",
            ),
        )
        for suffix, key, unit, target, measured, ours, baseline in kinds:
            compares = f"{measured}, inline dispatch_sync {what}, each round a fresh process"
            row_id = f"inline.memory{variant}{suffix}"
            row = lower_is_better(
                samples[key], row_id, compares, ours, baseline, jobs, unit, samples, target
            )
            result.append(row)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--mark", type=int, default=10_000)
    parser.add_argument("--keyed", action="store_true", help="a new idempotency key each")
    args = parser.parse_args(argv)
    if not 0 < 2 * args.mark <= args.jobs - args.mark:
        parser.error("need 0 < 2 * --mark <= --jobs - --mark")
    print(json.dumps(measure(args.jobs, args.mark, args.keyed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
