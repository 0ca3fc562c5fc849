"""The Inngest backend with its app called in process: the stand-in server and the served app,
with no web server in between.

As in the `inngest` harness, each session starts its own stand-in (`InngestHarness`: Event
API, executor, dev mode) and makes the app with `jobs_core.backends.inngest.create_inngest_app`;
here the stand-in reaches the app through httpx's ASGI transport (`asgi_transport`), so the
sync, every executor call and its answer go through the SDK's real serve handler in the test's
process, with no uvicorn and no port. The dispatcher and the SDK's own requests (events,
registration) still reach the stand-in over loopback HTTP, as they reach Inngest.

The app behind a real web server is the `inngest` harness's (C7, C16, C17).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.inngest_harness import ASGI_BASE_URL, InngestHarness, asgi_transport

from .harness_inngest import RETRY_DELAY, InngestBackendHarness


class InngestAsgiHarness(InngestBackendHarness):
    """The `inngest` harness's backend and checks; only how the app is reached differs."""

    @contextmanager
    def serving(self) -> Iterator[tuple[InngestHarness, Callable[[Any], str]]]:
        """A stand-in that calls the app through httpx's ASGI transport: `reach(app)` mounts
        `app` on the bridge, in the test's process, and returns the bridge's base URL."""
        with (
            asgi_transport() as bridge,
            InngestHarness(retry_delay=RETRY_DELAY, app_transport=bridge) as stand_in,
        ):

            def reach(app: Any) -> str:
                bridge.mount(app)
                return ASGI_BASE_URL

            yield stand_in, reach


def make_harness(resources: Any) -> InngestAsgiHarness:
    return InngestAsgiHarness()
