"""What a run's figures depend on besides the code: the machine, its load, the versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from .results import loadavg

ROOT = Path(__file__).resolve().parents[1]
CODE = ("jobs_core", "backends", "benchmarks", ":(exclude)benchmarks/results")
"""What a run measures: local changes there make its figures those of uncommitted code."""
PACKAGES = ("pydantic", "pydantic-core", "celery", "kombu", "dramatiq", "redis", "inngest", "httpx")


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git(*args: str) -> str:
    try:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip()


def machine() -> dict[str, Any]:
    """The machine and the code the run measured (the JSON's `meta.machine`)."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "loadavg": loadavg(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions(),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", *CODE)),
    }
