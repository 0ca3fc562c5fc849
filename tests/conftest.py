"""Shared fixtures: one private redis-server for the whole test session (started on demand)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


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
