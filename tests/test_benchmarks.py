"""The benchmarks run and produce every figure: `python -m benchmarks --smoke` (every scenario,
tiny sizes, two rounds) and the CPU micro-benchmark. Never how fast: the machine is shared, so
speed is for the full run to report, never for a test to assert."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

REQUIRED = {"micro", "memory", "inline", "celery", "dramatiq", "flow", "outbox", "constructs"}
TIMEOUT = 300.0
ROUNDS = 2
"""The smoke run's rounds (its default): enough to check that every round is kept."""


def _inngest_available() -> bool:
    try:
        return importlib.util.find_spec("jobs_core.backends.inngest") is not None and (
            importlib.util.find_spec("inngest") is not None
        )
    except ImportError:
        return False


def _run(
    args: list[str], timeout: float = TIMEOUT, returncode: int = 0
) -> subprocess.CompletedProcess[str]:
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
    assert proc.returncode == returncode, f"stdout:\n{stdout}\nstderr:\n{stderr[-5000:]}"
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (where `fcntl` exists; elsewhere, no lock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, each worker runs its own
        yield
        return
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `--smoke` run (every scenario, tiny sizes) for the tests of this module, made once
    per session even when pytest-xdist spreads them over its workers: the first worker to ask
    runs it, under a lock beside the workers' temporary directories, and the others read its
    JSON (or its failure)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's directory, above each worker's own
    out, stdout, error = (shared / f"bench-smoke.{ext}" for ext in ("json", "stdout", "error"))
    with _locked(shared / "bench-smoke.lock"):
        if not out.exists() and not error.exists():
            try:
                done = _run(["-m", "benchmarks", "--smoke", "--quiet", "--json", str(out)])
            except BaseException as failure:
                error.write_text(str(failure))
                out.unlink(missing_ok=True)
                raise
            stdout.write_text(done.stdout)
    if error.exists():
        pytest.fail(f"the smoke run failed (in another worker):\n{error.read_text()}")
    document: dict[str, Any] = json.loads(out.read_text())
    document["stdout"] = stdout.read_text()
    document["path"] = out
    return document


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _rows(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in run["rows"]}


def test_every_scenario_ran(smoke_run: dict[str, Any]) -> None:
    expected = smoke_run["expected"]
    assert not smoke_run["errors"], smoke_run["errors"]
    assert REQUIRED <= set(expected), smoke_run["skipped"]
    if _inngest_available():
        assert "inngest" in expected, smoke_run["skipped"]
    meta = smoke_run["meta"]
    assert meta["mode"] == "smoke" and meta["config"]["rounds"] == ROUNDS


def test_every_row_has_its_figures(smoke_run: dict[str, Any]) -> None:
    rows = _rows(smoke_run)
    wanted = {i for ids in smoke_run["expected"].values() for i in ids}
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
            assert row["unit"] == "×", f"{row_id}: a target is a ratio, not {row['unit']}"
        else:
            assert row["met"] is None, row_id


def test_comparisons_keep_every_round(smoke_run: dict[str, Any]) -> None:
    for row in smoke_run["rows"]:
        if "ratio" in row["samples"]:
            assert len(row["samples"]["ratio"]) == row["rounds"] == ROUNDS, row["id"]
            sides = [k for k in row["samples"] if k.endswith("_seconds")]
            assert len(sides) == 4, row["id"]  # each side's wall and CPU seconds
            assert all(len(row["samples"][k]) == row["rounds"] for k in sides), row["id"]


def test_worker_rows_measure_both_workers(smoke_run: dict[str, Any]) -> None:
    for row in smoke_run["rows"]:
        if row["id"] in {f"{b}.{s}" for b in ("celery", "dramatiq") for s in ("worker", "e2e")}:
            for side in ("ours", "plain"):
                assert row["figures"][f"{side}_worker_cpu_us"] > 0, row["id"]
                assert f"{side}_log_bytes_per_job" in row["figures"], row["id"]


def test_idle_rows_keep_every_latency(smoke_run: dict[str, Any]) -> None:
    """One job at a time to an idle worker: each side's latency of every job, ours / plain per
    round (the figure), with the ≤ 1.5× target."""
    idle = [r for r in smoke_run["rows"] if ".idle" in r["id"]]
    expected = {"celery.idle", "celery.idle.reliable_redis", "dramatiq.idle"}
    assert expected <= {r["id"] for r in idle}
    for row in idle:
        for side in ("ours_ms", "plain_ms"):
            assert len(row["samples"][side]) == row["n"] * row["rounds"], row["id"]
            assert min(row["samples"][side]) > 0, row["id"]
        assert row["lower_is_better"] and row["target"] == 1.5, row["id"]


def test_core_dispatch_is_set_against_its_floor(smoke_run: dict[str, Any]) -> None:
    """`core.dispatch` is the core's path over pydantic's validate + dump, in the same repeats."""
    row = _rows(smoke_run)["core.dispatch"]
    figures, samples = row["figures"], row["samples"]
    assert row["unit"] == "×" and row["target"] == 2.0 and row["lower_is_better"]
    assert figures["core_us"] > 0 and figures["floor_us"] > 0
    assert len(samples["core_over_floor"]) == len(samples["floor_us"]) == row["rounds"]


def test_every_construct_is_set_against_an_end_to_end_figure(smoke_run: dict[str, Any]) -> None:
    from benchmarks.constructs import CONSTRUCTS, markdown_table
    from benchmarks.results import row_from_json

    rows = [r for r in smoke_run["rows"] if r["id"].startswith("constructs.")]
    e2e = [r for r in rows if r["id"].startswith("constructs.e2e.")]
    assert {r["id"] for r in e2e} >= {"constructs.e2e.dramatiq", "constructs.e2e.celery"}
    for row in e2e:
        assert len(row["samples"]["e2e_us"]) == row["rounds"], row["id"]
    measured = [r for r in rows if r not in e2e]
    assert {r["id"].split(".")[1] for r in measured} >= {c.name for c in CONSTRUCTS} - {"hiredis"}
    for row in measured:
        figures = row["figures"]
        for name in ("clever_us", "plain_us", "saving_us", "e2e_us", "e2e_spread_us"):
            assert name in figures, (row["id"], name)
        assert figures["moves"] in (0.0, 1.0) and figures["kept"] in (0.0, 1.0), row["id"]
        assert ("kept" if figures["kept"] else "removed") in row["note"], row["id"]
        assert "against " in row["note"], row["id"]
    table = markdown_table([row_from_json(r) for r in rows])
    assert all(f"`{r['id']}`" in table for r in measured)
    assert not any(f"`{r['id']}`" in table for r in e2e)  # they are the column, not lines


def test_the_table_and_the_machine_are_reported(smoke_run: dict[str, Any]) -> None:
    lines = smoke_run["stdout"].splitlines()
    assert lines[0].split()[:2] == ["row", "n×rounds"]
    printed = {line.split()[0] for line in lines[2:] if line.strip()}
    assert {r["id"] for r in smoke_run["rows"]} <= printed
    machine = smoke_run["meta"]["machine"]
    assert machine["cpus"] and machine["versions"] and machine["python"]
    assert len(smoke_run["meta"]["loadavg_before"]) == 3


def test_report_reads_a_run_back(smoke_run: dict[str, Any], tmp_path: Path) -> None:
    path = str(smoke_run["path"])
    assert _run(["-m", "benchmarks.report", path]).stdout.splitlines()[0].startswith("row")
    compared = _run(["-m", "benchmarks.report", path, "--against", path]).stdout.splitlines()
    assert len(compared) == len(smoke_run["rows"])
    assert all(line.endswith("within") for line in compared)
    from benchmarks.constructs import is_construct_row
    from benchmarks.report import CONSTRUCTS_END, CONSTRUCTS_START, END, START

    ids = [r["id"] for r in smoke_run["rows"]]
    page = tmp_path / "performance.md"
    page.write_text(f"before\n{START}\nold\n{END}\nafter\n")
    _run(["-m", "benchmarks.report", path, "--docs", str(page)])
    text = page.read_text()
    assert text.startswith("before\n") and text.endswith("\nafter\n") and "old" not in text
    assert all(f"`{i}`" in text for i in ids)
    # A page with the constructs' markers gets their table there, the other rows in the first.
    page.write_text(f"a\n{START}\nold\n{END}\nb\n{CONSTRUCTS_START}\nold\n{CONSTRUCTS_END}\nc\n")
    _run(["-m", "benchmarks.report", path, "--docs", str(page)])
    text = page.read_text()
    results, constructs = text.split(CONSTRUCTS_START)
    assert "old" not in text and results.startswith("a\n") and constructs.endswith("\nc\n")
    in_constructs = {i for i in ids if is_construct_row(i)}
    assert in_constructs and all(f"`{i}`" in constructs for i in in_constructs)
    assert all(f"`{i}`" in results for i in ids if i not in in_constructs)
    assert not any(f"`{i}`" in results for i in in_constructs)


def test_report_merges_another_run(smoke_run: dict[str, Any], tmp_path: Path) -> None:
    """`--merge`: each scenario the other run measured without error comes from it, named."""
    from benchmarks.report import END, START, merge

    other = json.loads(Path(smoke_run["path"]).read_text())
    other["errors"] = {"memory": "failed there"}
    other["meta"]["json"] = "benchmarks/results/other.json"
    base = {**other, "errors": {"inngest": "failed here"}, "meta": smoke_run["meta"]}
    merged = merge(base, [other])
    assert [r["id"] for r in merged["rows"]] == [r["id"] for r in smoke_run["rows"]]
    assert merged["errors"] == {} and merged["merged"][0]["json"].endswith("other.json")
    assert "memory" not in merged["merged"][0]["scenarios"]  # it failed in the other run
    page, path = tmp_path / "performance.md", tmp_path / "other.json"
    path.write_text(json.dumps(other))
    page.write_text(f"{START}\n{END}\n")
    done = _run(["-m", "benchmarks.report", str(smoke_run["path"]), "--merge", str(path)])
    assert done.stdout.splitlines()[0].startswith("row")
    _run(
        [
            "-m",
            "benchmarks.report",
            str(smoke_run["path"]),
            "--merge",
            str(path),
            "--docs",
            str(page),
        ]
    )
    assert "are from another run" in page.read_text() and "other.json" in page.read_text()


def test_docs_never_take_a_smoke_run() -> None:
    done = _run(["-m", "benchmarks", "--smoke", "--docs"], timeout=60, returncode=2)
    assert "--docs" in done.stderr


def test_micro_benchmark_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "micro.json"
    done = _run(["-m", "benchmarks.micro", "--smoke", "--json", str(out)], timeout=120)
    document = json.loads(out.read_text())
    for section, whole in (("dispatch", "dispatch_us"), ("worker", "run_warning_us")):
        assert set(document[section]) == {"200B", "10KB", "200KB"}
        for size, figures in document[section].items():
            assert figures[whole] and all(v > 0 for v in figures[whole]), (section, size)
            for name, values in figures.items():
                assert len(values) in (1, document["repeats"], 3 * document["repeats"]), name
                assert all(_finite(v) for v in values), (section, size, name)
    assert all("core_over_floor" in f for f in document["dispatch"].values())
    stages = [k for k in document["dispatch"]["200B"] if k.startswith("stage_")]
    assert len(stages) >= 10 and "info_line_us" in document["worker"]["200B"]
    assert "core" in done.stdout and "info_line" in done.stdout
