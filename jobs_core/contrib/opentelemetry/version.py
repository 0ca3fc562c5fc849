"""The version the instrumentation scope reports: jobs_core's."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    VERSION = _version("jobs-core")
except PackageNotFoundError:  # pragma: no cover - a checkout that was never installed
    VERSION = "0"
