"""The `StepStore` implementations (C35): what a delivery reads, the first writer winning a
race, counters overwritten, and a finished run's records going after the retention. Each store
runs against a real server: Redis (a private redis-server), SQLite and PostgreSQL (through
SQLAlchemy), and Django's ORM (its migration applied, in the test project, on SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy

from jobs_core.steps.redis_store import RedisStepStore
from jobs_core.steps.sql_store import SqlStepStore, steps_table
from jobs_core.steps.store import MemoryStepStore, StepStore
from tests.conftest import DATABASES, _database

from .store_checks import CHECKS

ROOT = Path(__file__).resolve().parents[2]
DJANGO_PROJECT = ROOT / "tests" / "django_project"


@pytest.fixture(params=["memory", "redis", *DATABASES])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StepStore]:
    kind = request.param
    if kind == "memory":
        yield MemoryStepStore()
    elif kind == "redis":
        resources = request.getfixturevalue("resources")
        yield RedisStepStore(resources.redis, prefix=f"test:{uuid.uuid4().hex}:")
    else:
        database = _database(kind, tmp_path, request)
        sql = SqlStepStore(sqlalchemy.create_engine(next(database)))
        sql.create_table()
        yield sql
        sql.close()
        database.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_each_store(store: StepStore, check: Callable[[StepStore], None]) -> None:
    check(store)


DJANGO_SCRIPT = """
from jobs_core.contrib.django.steps import DjangoStepStore
from tests.steps.store_checks import CHECKS
for check in CHECKS:
    check(DjangoStepStore())
    print("passed", check.__name__)
"""


def test_the_django_store_after_its_migration(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DJANGO_DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}",
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(DJANGO_PROJECT)]),
    }

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=DJANGO_PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    manage("migrate", "--verbosity", "0")
    out = manage("shell", "-c", DJANGO_SCRIPT)
    assert out.count("passed") == len(CHECKS), out


def test_the_sql_table_is_the_one_the_django_migration_creates() -> None:
    migration = (ROOT / "jobs_core/contrib/django/migrations/0002_steprecord.py").read_text()
    for column in steps_table.columns:
        assert f'("{column.name}"' in migration, column.name
    assert '"db_table": "jobs_steps"' in migration and steps_table.name == "jobs_steps"
