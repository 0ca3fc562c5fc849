"""`python -m benchmarks`: run the scenarios, print the table, keep every sample as JSON.

    python -m benchmarks                          # full run, every scenario available
    python -m benchmarks --quick                  # short rounds: where the costs are
    python -m benchmarks --smoke                  # tiny sizes: every row produced (the tests)
    python -m benchmarks --only micro,celery --rounds 7 --json bench.json
    python -m benchmarks --only constructs        # the speed-only constructs, in µs
    python -m benchmarks --save --label quiet --docs   # the run for docs/performance.md

`--save` writes the JSON to `benchmarks/results/<date>[-<label>].json`; `--docs` puts this
run's table into `docs/performance.md`. `python -m benchmarks.report` reads a JSON back.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import Config
from .machine import ROOT, machine
from .report import update_docs
from .results import Row, format_table, loadavg
from .scenario import MODULES, Env, load, missing_requirement

RESULTS = ROOT / "benchmarks" / "results"
NEEDS_REDIS = {
    "inline",
    "celery",
    "dramatiq",
    "inngest",
    "flow",
    "outbox",
    "constructs",
    "steps",
    "events",
    "otel",
}


def run(
    names: Sequence[str], config: Config, log: Callable[[str], None]
) -> tuple[list[Row], dict[str, str], dict[str, str], dict[str, list[str]]]:
    """Run scenarios `names`; (rows, skipped, errors, expected row ids per scenario)."""
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}
    expected: dict[str, list[str]] = {}
    with ExitStack() as stack:
        redis_url = ""
        if NEEDS_REDIS & set(names):
            from tests.support.redis_server import RedisServer

            redis_url = stack.enter_context(RedisServer()).url
        env = Env(config=config, redis_url=redis_url, log=log)
        for name in names:
            reason = missing_requirement(name)
            if reason is not None:
                skipped[name] = reason
                log(f"{name}: skipped ({reason})")
                continue
            module = load(name)
            expected[name] = list(module.rows(config))
            started = time.monotonic()
            try:
                rows.extend(module.run(env))
            except Exception:
                errors[name] = traceback.format_exc()
                log(f"{name}: FAILED\n{errors[name]}")
            log(f"{name}: done in {time.monotonic() - started:.0f}s")
    return rows, skipped, errors, expected


def results_path(label: str | None) -> Path:
    """`benchmarks/results/<date>[-<label>].json`, numbered rather than overwriting."""
    stem = datetime.now().strftime("%Y-%m-%d") + (f"-{label}" if label else "")
    path, i = RESULTS / f"{stem}.json", 2
    while path.exists():
        path, i = RESULTS / f"{stem}-{i}.json", i + 1
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=(__doc__ or "").split("\n", 1)[0]
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", action="store_true", help="short rounds (a first look)")
    modes.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, 2 rounds: every row is produced, no figure means anything (tests)",
    )
    parser.add_argument("--only", help=f"comma-separated, from {','.join(MODULES)} (default: all)")
    parser.add_argument(
        "--rounds", type=int, help="rounds per comparison (default 5; quick 3; smoke 2)"
    )
    parser.add_argument("--json", type=Path, help="write every figure and sample here")
    parser.add_argument("--save", action="store_true", help="write the JSON to benchmarks/results/")
    parser.add_argument("--label", help="a word for the saved file's name and the docs")
    parser.add_argument(
        "--docs", action="store_true", help="put the table into docs/performance.md"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    names = [n.strip() for n in (args.only or ",".join(MODULES)).split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODULES))
    if unknown or not names:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(MODULES)}")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.smoke and args.docs:
        parser.error("--docs takes the figures of a full (or quick) run, never --smoke's")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    config = Config.make(mode, args.rounds)
    json_path = args.json or (results_path(args.label) if args.save else None)

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    # SIGTERM (a test's timeout, a CI cancel) unwinds like Ctrl-C: every `finally` runs, so the
    # redis-server and the worker processes this run started are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started, load_before = time.time(), loadavg()
    rows, skipped, errors, expected = run(names, config, log)
    print(format_table(rows))
    for name, reason in skipped.items():
        print(f"{name}: skipped ({reason})")
    for name in errors:
        print(f"{name}: FAILED (see stderr)")
    document: dict[str, Any] = {
        "meta": {
            "command": " ".join(
                ["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)]
            ),
            "quick": config.quick,
            "mode": config.mode,
            "label": args.label,
            "json": str(json_path.relative_to(ROOT))
            if json_path and json_path.is_relative_to(ROOT)
            else str(json_path),
            "config": {
                k: v if not hasattr(v, "items") else dict(v) for k, v in vars(config).items()
            },
            "started": started,
            "seconds": round(time.time() - started, 1),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "machine": machine(),
        },
        "expected": expected,
        "rows": [r.to_json() for r in rows],
        "skipped": skipped,
        "errors": errors,
    }
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
        print(f"figures and samples: {json_path}")
    if args.docs:
        update_docs(document, rows)
        print("docs/performance.md: table updated")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
