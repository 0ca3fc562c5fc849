"""The inline backend: runs each job in the caller's process before `dispatch` returns."""

from __future__ import annotations

from .dispatcher import InlineDispatcher, create_dispatcher, run_worker

__all__ = ["InlineDispatcher", "create_dispatcher", "run_worker"]
