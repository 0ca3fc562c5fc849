"""`python -m benchmarks`: run the scenarios, print a table, optionally write the figures as JSON.

    python -m benchmarks                       # full run, every backend available
    python -m benchmarks --quick               # a few hundred jobs per scenario (checks, CI)
    python -m benchmarks --backends inline,celery --rounds 7 --json bench.json

Scenarios (per backend): `dispatch` (single dispatches, ours vs the raw library call), `floor`
(the same rounds against raw redis-py LPUSH of the same bytes), `batch` (`dispatch_many_sync`
vs single dispatches), `e2e` (dispatch to last completion through one worker process, ours vs a
plain task), and `memory` (inline only: RSS over many jobs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from .common import Config, Env, Result

BACKENDS = ("inline", "celery", "dramatiq", "inngest")
SCENARIOS: dict[str, tuple[str, ...]] = {
    "inline": ("dispatch", "floor", "batch", "e2e", "memory"),
    "celery": ("dispatch", "floor", "batch", "e2e"),
    "dramatiq": ("dispatch", "floor", "batch", "e2e"),
    "inngest": ("dispatch", "floor", "batch", "e2e"),
}
"""What a run produces for each backend (the test checks that every one is there)."""

PACKAGES = ("pydantic", "celery", "kombu", "dramatiq", "redis", "inngest", "httpx")


def _load(backend: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.{backend}_bench")


def _versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _rate(value: float) -> str:
    return f"{value:,.0f}/s"


def _row(result: Result) -> list[str]:
    f = result.figures
    ours = base = ratio = cpu = ""
    if result.scenario in ("dispatch", "e2e"):
        ours, base = _rate(f["ours_per_s"]), "raw " + _rate(f["raw_per_s"])
        ratio = f"{f['ratio']:.2f}"
        cpu = f"{f['ours_cpu_us']:.0f} / {f['raw_cpu_us']:.0f}"
        if "ours_worker_cpu_us" in f and "raw_worker_cpu_us" in f:
            cpu += f"; worker {f['ours_worker_cpu_us']:.0f} / {f['raw_worker_cpu_us']:.0f}"
    elif result.scenario == "batch":
        ours, base = "many " + _rate(f["many_per_s"]), "single " + _rate(f["single_per_s"])
        ratio = f"{f['ratio']:.1f}x"
        cpu = f"{f['many_cpu_us']:.0f} / {f['single_cpu_us']:.0f}"
    elif result.scenario == "floor":
        ours, base = _rate(f["ours_per_s"]), "lpush " + _rate(f["lpush_per_s"])
        ratio = f"{f['ours_fraction']:.2f} (raw {f['raw_fraction']:.2f})"
        cpu = f"lpush {f['lpush_cpu_us']:.0f}"
    elif result.scenario == "memory":
        ours = f"peak {f['peak_rss_mib']:.1f} MiB"
        base = f"growth {f['growth_mib']:+.2f} MiB"
        ratio = "-"
    met = {True: "yes", False: "NO", None: ""}[result.met]
    target = (result.target or "").split(" ", 1)[-1] if result.target else ""
    return [
        result.scenario,
        result.backend,
        f"{result.n:,}x{result.rounds}",
        ours,
        base,
        ratio,
        target,
        met,
        cpu,
    ]


def format_table(results: Sequence[Result]) -> str:
    """A plain-text table: one line per scenario x backend.

    Rates are medians over the rounds; `ratio` is the median of the per-round ratios; `cpu
    us/job` is this process's CPU time per job, ours / baseline (for e2e the producer's, then
    the worker process's where /proc has it).
    """
    header = [
        "scenario",
        "backend",
        "n x rounds",
        "ours",
        "baseline",
        "ratio",
        "target",
        "met",
        "cpu us/job",
    ]
    rows = [header] + [_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(
    backends: Sequence[str], config: Config, log: Callable[[str], None]
) -> tuple[list[Result], dict[str, str]]:
    """Run every scenario of `backends` against one private redis-server; (results, skipped)."""
    from tests.support.redis_server import RedisServer

    results: list[Result] = []
    skipped: dict[str, str] = {}
    modules: dict[str, ModuleType] = {}
    for backend in backends:
        try:
            modules[backend] = _load(backend)
        except ImportError as error:
            skipped[backend] = f"not available: {error}"
            log(f"{backend}: skipped ({skipped[backend]})")
    with RedisServer() as server:
        env = Env(config=config, redis_url=server.url, log=log)
        for backend, module in modules.items():
            started = time.monotonic()
            results.extend(module.run(env))
            log(f"{backend}: done in {time.monotonic() - started:.1f}s")
    return results, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n", 1)[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="a few hundred jobs per scenario")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated, from {','.join(BACKENDS)} (default: all)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per comparison")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    config = Config.make(args.quick, args.rounds)

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[bench] {message}", file=sys.stderr, flush=True)

    # SIGTERM (a test's timeout, a CI cancel) unwinds like Ctrl-C: every `finally` runs, so the
    # redis-server and the worker processes this run started are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.time()
    load_before = _loadavg()
    try:
        results, skipped = run(backends, config, log)
    except Exception:
        traceback.print_exc()
        return 1
    print(format_table(results))
    for backend, reason in skipped.items():
        print(f"{backend}: {reason}")
    if args.json is not None:
        document: dict[str, Any] = {
            "meta": {
                "command": " ".join(["python -m benchmarks", *(argv or sys.argv[1:])]),
                "quick": config.quick,
                "config": config.__dict__,
                "started": started,
                "seconds": round(time.time() - started, 1),
                "loadavg_before": load_before,
                "loadavg_after": _loadavg(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "versions": _versions(),
            },
            "expected": {b: list(SCENARIOS[b]) for b in backends if b not in skipped},
            "results": [r.to_json() for r in results],
            "skipped": skipped,
        }
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
