"""Test-only stand-in for the Inngest server (the Dev Server cannot be installed here).

``InngestHarness`` is a loopback Event API + registration endpoint + executor that drives the
SDK's real serve endpoint over HTTP the way Inngest does; ``serve_functions`` serves SDK
functions in-process under uvicorn. See ``server.py`` for what is and is not modelled.

    with InngestHarness(retry_delay=0.01) as h:
        client = inngest.Inngest(app_id="demo", **h.client_kwargs())
        with serve_functions(client, [fn]) as url:
            h.register_app(url)
            client.send_sync(inngest.Event(name="demo/go", data={}))
            [run] = h.wait_for_runs(1, timeout=10, function_id=fn.id)
"""

from .protocol import (
    FUNCTION_FAILED_EVENT,
    hash_signing_key,
    sign_body,
    verify_response_signature,
)
from .records import (
    Attempt,
    EventApiRequest,
    EventRecord,
    RegisteredApp,
    RegisteredFunction,
    Run,
    RunStatus,
)
from .serve import ASGI_BASE_URL, asgi_transport, run_asgi_app, run_wsgi_app, serve_functions
from .server import HarnessError, InngestHarness

__all__ = [
    "ASGI_BASE_URL",
    "FUNCTION_FAILED_EVENT",
    "Attempt",
    "EventApiRequest",
    "EventRecord",
    "HarnessError",
    "InngestHarness",
    "RegisteredApp",
    "RegisteredFunction",
    "Run",
    "RunStatus",
    "asgi_transport",
    "hash_signing_key",
    "run_asgi_app",
    "run_wsgi_app",
    "serve_functions",
    "sign_body",
    "verify_response_signature",
]
