"""Item 5: `dispatch_sync` of an async job from inside a running event loop, on the inline
backend, is refused with a message naming the call to use, before anything is claimed or run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jobs_core import JobRegistry, Payload
from jobs_core.backends.inline import InlineDispatcher


class Note(Payload):
    text: str


def test_dispatch_sync_of_an_async_job_inside_async_def_says_to_await_dispatch() -> None:
    jobs = JobRegistry()
    ran: list[str] = []

    @jobs.job("notes.write")
    async def write(payload: Note) -> None:
        ran.append(payload.text)

    async def use_case() -> None:
        dispatcher = InlineDispatcher()
        with pytest.raises(RuntimeError) as refused:
            dispatcher.dispatch_sync(write, {"text": "a"}, idempotency_key="k")
        message = str(refused.value)
        assert "'notes.write'" in message and "use await ctx.jobs.dispatch(...)" in message
        assert ran == []
        receipt = await dispatcher.dispatch(write, {"text": "a"}, idempotency_key="k")
        assert not receipt.deduplicated and ran == ["a"]  # the refused call claimed no key

    asyncio.run(use_case())


def test_an_async_context_factory_is_an_async_part_too() -> None:
    jobs = JobRegistry[Any]()
    ran: list[Any] = []

    @jobs.job("notes.sync")
    def write(payload: Note, ctx: Any) -> None:
        ran.append(ctx)

    async def make_context() -> str:
        return "ctx"

    async def use_case() -> None:
        dispatcher = InlineDispatcher(context=make_context)
        with pytest.raises(RuntimeError, match=r"use await ctx\.jobs\.dispatch"):
            dispatcher.dispatch_sync(write, {"text": "a"})
        await dispatcher.dispatch(write, {"text": "a"})

    asyncio.run(use_case())
    assert ran == ["ctx"]


def test_dispatch_sync_of_a_sync_job_inside_async_def_runs_it() -> None:
    """A job with no async part runs inside `dispatch_sync` even from async code, as before."""
    jobs = JobRegistry()
    ran: list[str] = []

    @jobs.job("notes.plain")
    def write(payload: Note) -> None:
        ran.append(payload.text)

    async def use_case() -> None:
        InlineDispatcher().dispatch_sync(write, {"text": "b"})

    asyncio.run(use_case())
    assert ran == ["b"]
