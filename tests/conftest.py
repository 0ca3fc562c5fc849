"""Shared fixtures: one private redis-server for the whole test session (started on demand),
one private RabbitMQ node for the session (started by the first test that asks for it).

Also the soak's option: the short soak (1,000 jobs per backend) runs with the suite; the full one
(10,000 per backend, marker `soak_full`) only with `pytest -m soak_full --run-soak-full`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-soak-full",
        action="store_true",
        default=False,
        help="run the full soak, 10,000 jobs per backend (select it with -m soak_full)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-soak-full"):
        return
    skip = pytest.mark.skip(reason="the full soak runs with: pytest -m soak_full --run-soak-full")
    for item in items:
        if "soak_full" in item.keywords:
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


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[Any]:
    """A private RabbitMQ node (its own ports, data and cookie) for the session's AMQP tests."""
    from tests.support.rabbitmq_server import RabbitMQServer

    with RabbitMQServer() as server:
        yield server
