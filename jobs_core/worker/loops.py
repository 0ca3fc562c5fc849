"""Running a run's coroutine from sync worker threads: on the thread's own event loop when some
part of the job is async, and without any loop when every part is sync."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

_thread_loops = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_thread_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_loops.loop = loop
    return loop


def run_on_thread_loop(coro: Coroutine[Any, Any, Any], public_call: str) -> Any:
    """Run `coro` to the end from sync code, on this thread's own long-lived event loop.

    Reusing one loop per worker thread (instead of `asyncio.run` per job) keeps loop-bound
    resources such as connection pools usable from one job to the next. Inside a running
    event loop this cannot block: the error names `public_call`, the call to use there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError(
            f"a job with async parts cannot run to the end from sync code inside a running "
            f"event loop: use {public_call}"
        )
    return _thread_loop().run_until_complete(coro)


def run_without_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` of a job whose every part is synchronous: it finishes on its first step.
    Skipping the event loop keeps sync handlers free of a running loop (Django's ORM refuses
    to run inside one)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a synchronous job suspended: a sync handler returned an awaitable?")
