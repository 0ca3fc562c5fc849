"""Databases for the outbox tests: SQLite always, PostgreSQL from tests/support/postgres_server.

`database_url` runs a test once per database. Without a PostgreSQL the PostgreSQL cases skip,
saying why, except in CI (`CI=true`), where they fail: CI must run them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    from tests.support.postgres_server import Postgres, PostgresUnavailable

    try:
        pg = Postgres()
    except PostgresUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the PostgreSQL tests: {exc}")
        pytest.skip(str(exc))
    try:
        yield pg
    finally:
        pg.close()


def _database(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.db'}"
        return
    pg = request.getfixturevalue("postgres")
    url: str = pg.new_database()
    try:
        yield url
    finally:
        pg.drop_database(url)


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, then a PostgreSQL database."""
    yield from _database(request.param, tmp_path, request)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty PostgreSQL database."""
    yield from _database("postgresql", tmp_path, request)
