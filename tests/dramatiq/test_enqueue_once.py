"""A worker's enqueue whose reply is lost is not enqueued twice (issue 18).

When Redis shuts down, it can run a command and close the connection before its reply leaves:
the client sees a connection error for a command that happened. The worker broker tries an
enqueue again until Redis is back (a retry enqueued by the `Retries` middleware must not be
lost); it used to try under a new id each time, so a retry whose reply was lost went on the
queue twice, and the job's last attempt and `on_failure` ran twice (the short soak showed it
in about half its runs). A proxy between the worker broker and a real redis-server drops one
reply and closes the connection, as Redis does when it stops.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import pytest

from jobs_core.backends.dramatiq import close_broker, make_worker_broker
from tests.support.names import new_queue_name

pytestmark = pytest.mark.timeout(60)


class ReplyDropper:
    """A TCP proxy to `port`; after `drop_next()` it swallows the next reply from the server and
    closes that connection, as a server that ran a command and then stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listen_port: int = self.listener.getsockname()[1]
        self.dropping = threading.Event()
        self.dropped = threading.Event()

    def drop_next(self) -> None:
        self.dropping.set()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self.dropping.is_set():
                    self.dropping.clear()
                    self.dropped.set()
                    break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    @contextmanager
    def running(self) -> Iterator[ReplyDropper]:
        threading.Thread(target=self._serve, daemon=True).start()
        try:
            yield self
        finally:
            self.listener.close()


@pytest.mark.parametrize("delay", [None, 60_000], ids=["queue", "delay-queue"])
def test_an_enqueue_whose_reply_is_lost_is_enqueued_once(
    redis_server: Any, delay: int | None
) -> None:
    with ReplyDropper(redis_server.port).running() as proxy:
        broker = make_worker_broker(f"redis://127.0.0.1:{proxy.listen_port}/0")
        queue = new_queue_name("once")
        try:
            broker.declare_queue(queue)
            broker.do_qsize(queue)  # loads Dramatiq's script: the dropped reply is the enqueue's
            message: Any = dramatiq.Message(
                queue_name=queue, actor_name="once.job", args=({"n": 1},), kwargs={}, options={}
            )
            proxy.drop_next()
            broker.enqueue(message, delay=delay)
            assert proxy.dropped.is_set(), "the proxy dropped no reply: the test tested nothing"
        finally:
            close_broker(broker)
    client = redis_server.client()
    name = f"dramatiq:{queue}.DQ" if delay else f"dramatiq:{queue}"
    assert client.llen(name) == 1
    assert client.hlen(f"{name}.msgs") == 1
