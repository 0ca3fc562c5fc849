"""Small helpers for calling user code that may be sync or async."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
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
