"""Shared fixtures: one private redis-server for the whole test session (started on demand),
the databases of the outbox tests (SQLite, and a PostgreSQL the tests bring themselves), and
one private RabbitMQ node for the session (started by the first test that asks for it).

Also the soak's option: the short soak (1,000 jobs per backend) runs with the suite; the full one
(10,000 per backend, marker `soak_full`) only with `pytest -m soak_full --run-soak-full`, and the
kill and restart runs (marker `reliability_runs`) only with `--run-reliability-runs`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-soak-full",
        action="store_true",
        default=False,
        help="run the full soak, 10,000 jobs per backend (select it with -m soak_full)",
    )
    parser.addoption(
        "--run-reliability-runs",
        action="store_true",
        default=False,
        help="run the kill and restart runs of tests/soak/reliability_runs.py (2,000 jobs each)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    on_demand = {
        "soak_full": ("--run-soak-full", "pytest -m soak_full --run-soak-full"),
        "reliability_runs": ("--run-reliability-runs", "pytest --run-reliability-runs"),
    }
    for marker, (option, command) in on_demand.items():
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"runs on demand only: {command}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


class SharedResources:
    """Session-wide resources for harnesses; the Redis server starts on first use."""

    def __init__(self) -> None:
        self._server: Any = None
        self._next_db = 0

    @property
    def server(self) -> Any:
        if self._server is None:
            from tests.support.redis_server import RedisServer

            self._server = RedisServer().start()
        return self._server

    def redis_url(self, db: int = 0) -> str:
        return self.server.url_for_db(db)

    @property
    def redis(self) -> Any:
        return self.server.client()

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="session")
def resources() -> Iterator[SharedResources]:
    shared = SharedResources()
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A private redis-server for one test (for tests that stop or restart it)."""
    from tests.support.redis_server import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def store() -> Iterator[Any]:
    """A second private redis-server, apart from the broker, where the jobs of a worker test
    record their runs: stopping or restarting the broker keeps the record."""
    from tests.support.redis_server import RedisServer

    with RedisServer() as server:
        yield server


# -- databases (the outbox): SQLite always, PostgreSQL from tests/support/postgres_server.py ------
# Without a PostgreSQL the PostgreSQL cases skip, saying why, except in CI (`CI=true`), where
# they fail: CI must run them.

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


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[Any]:
    """A private RabbitMQ node (its own ports, data and cookie) for the session's AMQP tests."""
    from tests.support.rabbitmq_server import RabbitMQServer

    with RabbitMQServer() as server:
        yield server
