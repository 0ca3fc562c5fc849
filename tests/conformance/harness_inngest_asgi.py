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

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import inngest

from jobs_core import JobRegistry
from jobs_core.backends.inngest import InngestDispatcher, create_inngest_app
from jobs_core.instrumentation import Instrumentation
from tests.inngest_harness import ASGI_BASE_URL, InngestHarness, asgi_transport

from .harness_inngest import RETRY_DELAY, InngestBackendHarness, InngestSession


class InngestAsgiHarness(InngestBackendHarness):
    """The `inngest` harness's backend and checks; only how the app is reached differs."""

    @contextmanager
    def session(
        self, registry: JobRegistry[Any], *, context: Any, instrumentation: Instrumentation
    ) -> Iterator[InngestSession]:
        app_id = f"conf-{uuid.uuid4().hex[:8]}"
        with (
            asgi_transport() as bridge,
            InngestHarness(retry_delay=RETRY_DELAY, app_transport=bridge) as stand_in,
        ):
            client = inngest.Inngest(app_id=app_id, **stand_in.client_kwargs())
            bridge.mount(
                create_inngest_app(
                    registry, context=context, client=client, instrumentation=instrumentation
                )
            )
            stand_in.register_app(ASGI_BASE_URL + "/api/inngest")
            dispatcher = InngestDispatcher(client, instrumentation=instrumentation)
            try:
                yield InngestSession(stand_in, app_id, dispatcher)
            finally:
                dispatcher.close()


def make_harness(resources: Any) -> InngestAsgiHarness:
    return InngestAsgiHarness()
