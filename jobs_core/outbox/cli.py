"""`python -m jobs_core relay APP:REGISTRY --database-url URL`: the outbox relay's command
(its options are declared in jobs_core.__main__, which must not import SQLAlchemy)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from .. import JobRegistry
from ..backend import announce, dispatcher_factory
from ..config import import_string, load_settings
from ..errors import JobsError

DATABASE_URL_ENV = "JOBS_DATABASE_URL"


def cmd_relay(args: argparse.Namespace) -> int:
    from sqlalchemy import create_engine, make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    from .outbox import Outbox
    from .relay import serve

    if not args.database_url:
        raise JobsError(f"no database: pass --database-url or set {DATABASE_URL_ENV}")
    registry = import_string(args.registry, "APP:REGISTRY")
    if not isinstance(registry, JobRegistry):
        raise JobsError(f"{args.registry} is a {type(registry).__name__}, not a JobRegistry")
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"
        )
    url = make_url(args.database_url)
    is_async = url.get_dialect().is_async
    engine: Any = create_async_engine(url) if is_async else create_engine(url)
    outbox = Outbox(engine)
    backend = getattr(args, "backend", None)  # --backend, over JOBS_BACKEND
    settings = load_settings(backend=backend) if backend else load_settings()
    context = import_string(args.context, "--context") if args.context else None
    dispatcher: Any = None
    try:
        if args.create_table:
            _run(outbox.create_table_async(), is_async)
        if args.requeue_failed:
            n = _run(outbox.store.requeue_failed(), is_async)
            print(json.dumps({"requeued": n}))
            return 0
        factory = dispatcher_factory(settings.backend)
        dispatcher = factory(settings, context=context, instrumentation=None)
        relay = outbox.relay(
            dispatcher, registry, batch_size=args.batch_size, poll_interval=args.poll_interval
        )
        announce(settings, "relay", {"backend": "--backend"} if backend else {})
        logging.getLogger("jobs_core.outbox").info(
            "outbox relay %s: %s -> %s", relay.owner, url.render_as_string(), settings.backend
        )
        if args.once:
            if is_async:
                sent = _run(_once_async(relay), True)
            else:
                try:
                    sent = relay.run_once()
                finally:
                    relay.close()
            print(json.dumps({"sent": sent}))
            return 0
        serve(relay)
        return 0
    finally:
        close = getattr(dispatcher, "close", None)
        if close is not None:
            close()
        _run(engine.dispose(), is_async)


async def _once_async(relay: Any) -> int:
    try:
        sent: int = await relay.run_once_async()
        return sent
    finally:
        await relay.close_async()


def _run(value: Any, is_async: bool) -> Any:
    """`value`, awaited if it is a coroutine (the async engine's methods)."""
    import asyncio
    import inspect

    if inspect.isawaitable(value):
        return asyncio.run(value)  # type: ignore[arg-type]
    return value
