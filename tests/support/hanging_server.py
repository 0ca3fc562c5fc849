"""Sockets that misbehave: one that accepts and never answers, and a port that refuses."""

from __future__ import annotations

import socket
import threading

from .redis_server import free_port


class HangingServer:
    """Accepts TCP connections on a loopback port and never answers (a hung broker or API)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._accepted.append(conn)

    def url(self, scheme: str = "redis") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> HangingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._accepted:
            conn.close()
        self._sock.close()


class RefusingPort:
    """A loopback port on which nothing listens: connections are refused at once."""

    def __init__(self) -> None:
        self.port = free_port()

    def url(self, scheme: str = "redis") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"
