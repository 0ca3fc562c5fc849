"""Where `jobs_core`'s modules come from in a checkout of its repository (imported first, by
`jobs_core/__init__.py`, before any other of its modules)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any


def _use_the_checkout() -> None:
    """Where `jobs_core` comes from a checkout of its repository, import its modules from the
    checkout's files, and `jobs_core.backends` from the checkout's `backends/` folder.

    The repository keeps the adapters in a top-level `backends/` folder, which an install maps
    to `jobs_core.backends` (pyproject.toml). Its development install (`pip install -e .`) is a
    tree of links to the checkout's files, which type checkers follow
    (`[tool.distutils.editable_wheel]`); the modules are imported from the checkout itself, so
    that a module added since the install is found too. When the checkout's own folder comes
    first on `sys.path` (its test runs, `python -m jobs_core` there), nothing maps
    `jobs_core.backends`: it is the checkout's `backends/`. An installed package is left alone.
    Runs before `jobs_core` imports any other of its modules."""
    package: Any = sys.modules["jobs_core"]
    here = Path(__file__).parent
    if (here / "__init__.py").is_symlink():  # the development install's tree of links
        here = (here / "__init__.py").resolve().parent
        package.__path__ = [str(here)]
    checkout = here.parent / "backends"
    name = "jobs_core.backends"
    if (
        name in sys.modules
        or (here / "backends").is_dir()
        or not (checkout / "inline" / "__init__.py").is_file()
    ):
        return
    spec = importlib.util.spec_from_file_location(
        name, checkout / "__init__.py", submodule_search_locations=[str(checkout)]
    )
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    package.backends = module


_use_the_checkout()


_use_the_checkout()
