"""`python -m benchmarks --quick` runs and produces every figure (not how fast: the machine is
shared, so speed is for the full run to report, never for a test to assert)."""

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

REQUIRED = {"inline", "celery", "dramatiq"}
SIGNED_FIGURES = {"growth_mib"}
"""Figures that may be zero or negative (RSS can stay flat or shrink); all others are > 0."""

TIMEOUT = 150.0


def _inngest_available() -> bool:
    try:
        return importlib.util.find_spec("jobs_core.backends.inngest") is not None and (
            importlib.util.find_spec("inngest") is not None
        )
    except ImportError:
        return False


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `--quick` run (2 rounds) for all the tests of this module."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    command = [sys.executable, "-m", "benchmarks", "--quick", "--rounds", "2", "--quiet"]
    proc = subprocess.Popen(
        [*command, "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            # SIGTERM first: the benchmark then stops its redis-server and workers itself.
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr[-5000:]}"
    assert out.exists(), stdout
    document: dict[str, Any] = json.loads(out.read_text())
    document["stdout"] = stdout
    return document


def test_every_backend_ran(quick_run: dict[str, Any]) -> None:
    expected = quick_run["expected"]
    assert REQUIRED <= set(expected), quick_run["skipped"]
    if _inngest_available():
        assert "inngest" in expected, quick_run["skipped"]


def test_every_scenario_has_its_figures(quick_run: dict[str, Any]) -> None:
    results = quick_run["results"]
    found = {(r["backend"], r["scenario"]) for r in results}
    wanted = {(b, s) for b, scenarios in quick_run["expected"].items() for s in scenarios}
    assert wanted <= found, f"missing: {sorted(wanted - found)}"
    for result in results:
        where = f"{result['scenario']} on {result['backend']}"
        assert result["n"] > 0 and result["rounds"] > 0, where
        assert result["figures"], where
        for name, value in result["figures"].items():
            assert isinstance(value, (int, float)) and math.isfinite(value), (where, name, value)
            if name not in SIGNED_FIGURES:
                assert value > 0, (where, name, value)
        for name, samples in result["samples"].items():
            assert len(samples) == result["rounds"], (where, name)
            assert all(s > 0 for s in samples), (where, name, samples)
        if result["target"] is not None:
            assert isinstance(result["met"], bool), where


def test_comparisons_carry_both_sides_and_the_ratio(quick_run: dict[str, Any]) -> None:
    sides = {
        "dispatch": ("ours_per_s", "raw_per_s", "ratio"),
        "e2e": ("ours_per_s", "raw_per_s", "ratio"),
        "batch": ("many_per_s", "single_per_s", "ratio"),
        "floor": ("lpush_per_s", "ours_fraction", "raw_fraction"),
        "memory": ("peak_rss_mib", "growth_mib"),
    }
    for result in quick_run["results"]:
        for name in sides[result["scenario"]]:
            assert name in result["figures"], (result["scenario"], result["backend"], name)


def test_the_table_is_printed(quick_run: dict[str, Any]) -> None:
    table = quick_run["stdout"]
    assert table.splitlines()[0].split()[:2] == ["scenario", "backend"]
    for result in quick_run["results"]:
        assert any(
            line.split()[:2] == [result["scenario"], result["backend"]]
            for line in table.splitlines()
        ), (result["scenario"], result["backend"])
