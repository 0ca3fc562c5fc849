"""The benchmarks run and produce every figure: `python -m benchmarks --quick` and the CPU
micro-benchmark. Never how fast: the machine is shared, so speed is for the full run to
report, never for a test to assert."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

REQUIRED = {"micro", "memory", "inline", "celery", "dramatiq", "flow", "outbox"}
TIMEOUT = 300.0


def _inngest_available() -> bool:
    try:
        return importlib.util.find_spec("jobs_core.backends.inngest") is not None and (
            importlib.util.find_spec("inngest") is not None
        )
    except ImportError:
        return False


def _run(args: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a benchmark command; on a timeout, SIGTERM first so that it stops what it started."""
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr[-5000:]}"
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `--quick` run (2 rounds) for the tests of this module."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    done = _run(["-m", "benchmarks", "--quick", "--rounds", "2", "--quiet", "--json", str(out)])
    document: dict[str, Any] = json.loads(out.read_text())
    document["stdout"] = done.stdout
    document["path"] = out
    return document


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_every_scenario_ran(quick_run: dict[str, Any]) -> None:
    expected = quick_run["expected"]
    assert not quick_run["errors"], quick_run["errors"]
    assert REQUIRED <= set(expected), quick_run["skipped"]
    if _inngest_available():
        assert "inngest" in expected, quick_run["skipped"]


def test_every_row_has_its_figures(quick_run: dict[str, Any]) -> None:
    rows = {r["id"]: r for r in quick_run["rows"]}
    wanted = {i for ids in quick_run["expected"].values() for i in ids}
    assert wanted <= set(rows), f"missing: {sorted(wanted - set(rows))}"
    for row_id, row in rows.items():
        assert row["n"] > 0 and row["rounds"] > 0, row_id
        assert _finite(row["value"]) and row["low"] <= row["value"] <= row["high"], row_id
        assert row["compares"] and row["ours"] and row["loadavg"] is not None, row_id
        assert row["figures"], row_id
        for name, value in row["figures"].items():
            assert _finite(value), (row_id, name, value)
            if name.endswith("_per_s"):
                assert value > 0, (row_id, name, value)
        for name, samples in row["samples"].items():
            assert samples and all(_finite(s) for s in samples), (row_id, name)
        if row["target"] is not None:
            assert isinstance(row["met"], bool), row_id
        else:
            assert row["met"] is None, row_id


def test_comparisons_keep_every_round(quick_run: dict[str, Any]) -> None:
    for row in quick_run["rows"]:
        if "ratio" in row["samples"]:
            assert len(row["samples"]["ratio"]) == row["rounds"], row["id"]
            sides = [k for k in row["samples"] if k.endswith("_seconds")]
            assert len(sides) == 4, row["id"]  # each side's wall and CPU seconds
            assert all(len(row["samples"][k]) == row["rounds"] for k in sides), row["id"]


def test_worker_rows_measure_both_workers(quick_run: dict[str, Any]) -> None:
    for row in quick_run["rows"]:
        if row["id"] in {f"{b}.{s}" for b in ("celery", "dramatiq") for s in ("worker", "e2e")}:
            for side in ("ours", "plain"):
                assert row["figures"][f"{side}_worker_cpu_us"] > 0, row["id"]
                assert f"{side}_log_bytes_per_job" in row["figures"], row["id"]


def test_the_table_and_the_machine_are_reported(quick_run: dict[str, Any]) -> None:
    lines = quick_run["stdout"].splitlines()
    assert lines[0].split()[:2] == ["row", "n×rounds"]
    printed = {line.split()[0] for line in lines[2:] if line.strip()}
    assert {r["id"] for r in quick_run["rows"]} <= printed
    machine = quick_run["meta"]["machine"]
    assert machine["cpus"] and machine["versions"] and machine["python"]
    assert len(quick_run["meta"]["loadavg_before"]) == 3


def test_report_reads_a_run_back(quick_run: dict[str, Any], tmp_path: Path) -> None:
    path = str(quick_run["path"])
    assert _run(["-m", "benchmarks.report", path]).stdout.splitlines()[0].startswith("row")
    compared = _run(["-m", "benchmarks.report", path, "--against", path]).stdout.splitlines()
    assert len(compared) == len(quick_run["rows"])
    assert all(line.endswith("within") for line in compared)
    page = tmp_path / "performance.md"
    from benchmarks.report import END, START

    page.write_text(f"before\n{START}\nold\n{END}\nafter\n")
    _run(["-m", "benchmarks.report", path, "--docs", str(page)])
    text = page.read_text()
    assert text.startswith("before\n") and text.endswith("\nafter\n") and "old" not in text
    assert all(f"`{r['id']}`" in text for r in quick_run["rows"])


def test_micro_benchmark_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "micro.json"
    done = _run(["-m", "benchmarks.micro", "--quick", "--json", str(out)], timeout=120)
    document = json.loads(out.read_text())
    for section, whole in (("dispatch", "dispatch_us"), ("worker", "run_warning_us")):
        assert set(document[section]) == {"200B", "10KB", "200KB"}
        for size, figures in document[section].items():
            assert figures[whole] and all(v > 0 for v in figures[whole]), (section, size)
            for name, values in figures.items():
                assert len(values) in (1, document["repeats"], 3 * document["repeats"]), name
                assert all(_finite(v) for v in values), (section, size, name)
    stages = [k for k in document["dispatch"]["200B"] if k.startswith("stage_")]
    assert len(stages) >= 10 and "info_line_us" in document["worker"]["200B"]
    assert "core" in done.stdout and "info_line" in done.stdout
