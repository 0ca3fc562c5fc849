"""Calling user code that may be sync or async: telling which, and running a coroutine from
sync worker threads (on the thread's own event loop when some part of a job is async, and
without any loop when every part is sync)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any


def is_async_callable(fn: Any) -> bool:
    """True when calling `fn` returns a coroutine (async def, or an object with async __call__)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we need the bound method itself
    return call is not None and not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


def callable_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


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
