"""Serve SDK functions (or any ASGI app) in-process under uvicorn, or a WSGI app (Flask,
Django) under the standard library's server, on a free loopback port; or call an ASGI app in
process with no server at all (``asgi_transport``).

The server runs in a background thread and is stopped on exit of the context manager. Start-up
is awaited with a threading.Event set right after uvicorn's own ``startup`` (sockets
listening), with a deadline, so no test sleeps on it; the WSGI server listens before its
thread starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
import wsgiref.simple_server
from collections.abc import Iterator
from typing import Any

import fastapi
import httpx
import inngest
import inngest.fast_api
import uvicorn

DEFAULT_SERVE_PATH = "/api/inngest"


class _ThreadedServer(uvicorn.Server):
    """uvicorn.Server that signals when it is listening (or gave up starting)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self.failure: BaseException | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()

    def run_in_thread(self, sock: socket.socket) -> None:
        try:
            self.run(sockets=[sock])
        except BaseException as err:  # uvicorn exits via SystemExit on start-up failure
            self.failure = err
        finally:
            self.ready.set()


@contextlib.contextmanager
def run_asgi_app(
    app: Any,
    *,
    host: str = "127.0.0.1",
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 10.0,
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread; yield its base URL ``http://host:port``.

    The port is bound here (port 0) before uvicorn starts, so it is known up front and
    nothing else can take it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="auto",
        timeout_graceful_shutdown=int(shutdown_timeout),
    )
    server = _ThreadedServer(config)
    thread = threading.Thread(
        target=server.run_in_thread, args=(sock,), name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        if not server.ready.wait(startup_timeout):
            raise TimeoutError(f"uvicorn did not start within {startup_timeout}s")
        if not server.started:
            raise RuntimeError(f"uvicorn failed to start: {server.failure!r}")
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(shutdown_timeout)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"uvicorn on port {port} did not stop")


@contextlib.contextmanager
def serve_functions(
    client: inngest.Inngest,
    functions: list[inngest.Function[Any]],
    *,
    serve_path: str | None = None,
    host: str = "127.0.0.1",
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve ``functions`` with ``inngest.fast_api.serve`` and yield the serve URL.

    The URL is ``http://127.0.0.1:<port>/api/inngest`` (or ``serve_path``): give it to
    ``InngestHarness.register_app``. In cloud mode the client needs a signing key, or
    ``serve`` raises ``SigningKeyMissingError`` here.
    """
    app = fastapi.FastAPI()
    inngest.fast_api.serve(app, client, functions, serve_path=serve_path)
    with run_asgi_app(
        app, host=host, startup_timeout=startup_timeout, shutdown_timeout=shutdown_timeout
    ) as base_url:
        yield base_url + (serve_path or DEFAULT_SERVE_PATH)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging."""


@contextlib.contextmanager
def run_wsgi_app(app: Any, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Run a WSGI ``app`` (one thread per request) in a thread; yield ``http://host:port``."""
    server = wsgiref.simple_server.make_server(
        host, 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"wsgi-{server.server_port}",
        daemon=True,
    )
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


ASGI_BASE_URL = "http://inngest-app.in-process"
"""The origin an app called through ``asgi_transport`` is reached at (no socket behind it)."""


class AsgiBridge(httpx.BaseTransport):
    """httpx's own ``ASGITransport`` for synchronous clients: each request is handed to the
    ASGI app on a private event loop, in a thread of its own, as uvicorn would run it (one
    loop; requests in flight at once are served concurrently on it). ``app`` may be given
    later (``mount``): an app made with the harness's address needs the harness first."""

    def __init__(self, app: Any = None, *, timeout: float = 60.0) -> None:
        self._asgi: httpx.ASGITransport | None = None
        if app is not None:
            self.mount(app)
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="asgi-bridge", daemon=True
        )
        self._thread.start()

    def mount(self, app: Any) -> None:
        """Serve ``app`` from now on."""
        self._asgi = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        asgi = self._asgi
        if asgi is None:
            raise httpx.ConnectError("no app mounted on the ASGI bridge", request=request)

        async def call() -> httpx.Response:
            response = await asgi.handle_async_request(request)
            body = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=body)

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        try:
            return future.result(self._timeout)
        except TimeoutError:
            future.cancel()
            raise httpx.ReadTimeout("the in-process app did not answer", request=request) from None

    def close(self) -> None:
        """Nothing: every client given the bridge closes it, and it outlives them all."""

    def shutdown(self) -> None:
        """Stop the event loop and its thread (``asgi_transport`` does, on exit)."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("the ASGI bridge's event loop did not stop")
        self._loop.close()


@contextlib.contextmanager
def asgi_transport(app: Any = None) -> Iterator[AsgiBridge]:
    """An httpx transport that calls the ASGI ``app`` in process (``AsgiBridge``; the app may
    be mounted later); give it to ``InngestHarness(app_transport=...)`` and register the app
    at ``ASGI_BASE_URL`` + its serve path. Its loop is stopped on exit."""
    bridge = AsgiBridge(app)
    try:
        yield bridge
    finally:
        bridge.shutdown()
