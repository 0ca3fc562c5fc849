"""The shape of the code: one protocol for every backend, one shape for every worker factory, and
no import circle anywhere in `jobs_core` or its backends."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest

from jobs_core.backend import BUILTIN_BACKENDS, load_backend

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(BUILTIN_BACKENDS))
def test_every_backend_offers_run_worker_and_create_dispatcher_of_one_shape(name: str) -> None:
    backend: Any = load_backend(name)
    worker = inspect.signature(backend.run_worker).parameters
    assert list(worker) == ["registry", "context", "settings", "argv"]
    assert [p.kind for p in worker.values()][1:] == [inspect.Parameter.KEYWORD_ONLY] * 3
    dispatcher = inspect.signature(backend.create_dispatcher).parameters
    assert next(iter(dispatcher)) == "settings"
    assert dispatcher["context"].kind == inspect.Parameter.KEYWORD_ONLY


def test_every_worker_factory_takes_the_registry_then_context_and_instrumentation() -> None:
    from jobs_core.backends.celery import create_celery_app
    from jobs_core.backends.dramatiq import register_actors
    from jobs_core.backends.inngest import create_inngest_functions

    for factory in (create_celery_app, register_actors, create_inngest_functions):
        params = inspect.signature(factory).parameters
        assert next(iter(params)) == "registry", factory
        for name in ("context", "instrumentation"):
            assert params[name].kind == inspect.Parameter.KEYWORD_ONLY, (factory, name)


def _modules() -> dict[str, Path]:
    found = {}
    for root in ("jobs_core", "backends"):
        for path in (ROOT / root).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[0] == "backends":
                parts = ["jobs_core", *parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that `name` imports, at import or later inside a function (a
    function-level import only hides a circle), but not under TYPE_CHECKING. `from .. import
    x` imports the package itself: its `__init__` runs, with all it imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found: set[str] = set()
    for inner in ast.walk(tree):
        if id(inner) in typing_only:
            continue
        if isinstance(inner, ast.Import):
            found.update(alias.name for alias in inner.names)
        elif isinstance(inner, ast.ImportFrom):
            base = inner.module or ""
            if inner.level:
                up = package.split(".")[: len(package.split(".")) - inner.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in inner.names)
    return {m for m in found if m in modules and m != name}


def test_no_import_circle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}

    def is_package_of(a: str, b: str) -> bool:
        return b.startswith(a + ".")

    circles = []
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if is_package_of(name, nxt):  # a package importing its own modules
                continue
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


# -- each backend a thin translation (issue 27) ------------------------------------------------

ADAPTER_MODULES = ("dispatcher.py", "worker.py", "app.py", "functions.py", "serve.py")
"""The modules that translate between the core and a library: under `ADAPTER_LINES` each."""
ADAPTER_LINES = 350
FIXES_LINES = 200
OPT_IN = {"reliable_redis.py"}
"""Opt-in components, apart from the size and private-class rules (the reliable Redis transport
is kombu's Redis transport with its fixes: docs/reliability-celery.md)."""


def _backend_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "backends").rglob("*.py") if p.name not in OPT_IN)


def test_each_adapter_is_a_thin_translation_and_each_fixes_module_is_small() -> None:
    sizes = {
        p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in _backend_modules()
    }
    too_long = {
        path: lines
        for path, lines in sizes.items()
        if (path.endswith(ADAPTER_MODULES) and lines >= ADAPTER_LINES)
        or (path.endswith("fixes.py") and lines >= FIXES_LINES)
    }
    assert too_long == {}
    assert {p.split("/")[1] for p in sizes if p.endswith("fixes.py")} >= {"celery", "dramatiq"}


def _original_names(tree: ast.Module) -> dict[str, str]:
    """Each module-level name bound to a library's attribute: `from x import A as B` and
    `B: Any = module.A` both give B -> A."""
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and not node.level:
            names.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            attribute = value.attr if isinstance(value, ast.Attribute) else None
            if isinstance(value, ast.Name):
                attribute = names.get(value.id, value.id)
            for target in targets:
                if isinstance(target, ast.Name) and attribute is not None:
                    names[target.id] = attribute
    return names


def test_no_class_subclasses_a_private_library_class() -> None:
    private = []
    for path in _backend_modules():
        tree = ast.parse(path.read_text())
        names = _original_names(tree)
        ours = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            for base in node.bases:
                if isinstance(base, ast.Subscript):
                    base = base.value
                name = base.attr if isinstance(base, ast.Attribute) else ast.unparse(base)
                name = names.get(name, name)
                if name.startswith("_") and name not in ours:
                    private.append(f"{path.relative_to(ROOT)}: {node.name}({ast.unparse(base)})")
    assert private == []
