"""The distribution installs the adapters as `jobs_core.backends`, never as a top-level package.

A top-level `backends` package in site-packages would shadow (or be shadowed by) an
application's own `backends` module: a Django project with a `backends.py` got
`No module named 'backends.celery'` as soon as `JOBS_BACKEND=celery`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def _run(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_top_level_backends_package_is_installed(tmp_path: Path) -> None:
    done = _run("import backends", tmp_path)
    assert done.returncode != 0
    assert "No module named 'backends'" in done.stderr

    done = _run(
        """
        import jobs_core.backends.celery, jobs_core.backends.dramatiq
        import jobs_core.backends.inline, jobs_core.backends.inngest
        print(jobs_core.backends.celery.CeleryDispatcher.__module__)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "jobs_core.backends.celery.dispatcher"


def test_an_apps_own_backends_module_does_not_clash(tmp_path: Path) -> None:
    (tmp_path / "backends.py").write_text("WHAT = 'the app module'\n")
    done = _run(
        """
        import backends
        from jobs_core import create_dispatcher

        for name in ("celery", "dramatiq"):
            import os
            os.environ["JOBS_BACKEND"] = name
            dispatcher = create_dispatcher()
            print(type(dispatcher).__module__)
            dispatcher.close()
        print(backends.WHAT)
        """,
        tmp_path,
        JOBS_BROKER_URL="redis://127.0.0.1:1/0",  # never contacted: nothing is dispatched
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "jobs_core.backends.celery.dispatcher",
        "jobs_core.backends.dramatiq.dispatcher",
        "the app module",
    ]


def test_each_web_framework_is_an_extra_of_its_own() -> None:
    """`jobs-core[inngest]` is the SDK alone: a Django app does not get FastAPI and uvicorn."""
    import importlib.metadata
    import re

    requires = importlib.metadata.metadata("jobs-core").get_all("Requires-Dist") or []

    def names(extra: str) -> set[str]:
        marker = f'extra == "{extra}"'
        return {re.split(r"[\[<>=;! ]", r, maxsplit=1)[0] for r in requires if marker in r}

    assert names("inngest") == {"inngest", "httpx"}
    assert {"fastapi", "uvicorn"} <= names("inngest-fastapi")
    assert "flask" in names("inngest-flask") and "django" in names("inngest-django")
    for framework in ("inngest-fastapi", "inngest-flask", "inngest-django"):
        assert "jobs-core" in names(framework)  # each brings the SDK through [inngest]


def test_only_the_reliable_redis_extra_pins_kombu() -> None:
    """`jobs-core[celery]` takes the newest kombu Celery accepts; the opt-in reliable Redis
    transport, which reaches into kombu's transport, alone pins the version it was verified on."""
    import importlib.metadata

    requires = importlib.metadata.metadata("jobs-core").get_all("Requires-Dist") or []

    def of(extra: str) -> list[str]:
        return [r.split(";")[0].replace(" ", "") for r in requires if f'extra == "{extra}"' in r]

    assert not any(r.startswith("kombu") for r in of("celery")), of("celery")
    assert "kombu<5.8,>=5.7" in of("celery-reliable-redis"), of("celery-reliable-redis")
