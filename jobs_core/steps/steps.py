"""The `step` parameter of a handler: `Steps` (async handlers) and `StepsSync` (sync ones).

A handler that takes a third parameter annotated `Steps` or `StepsSync` is a job with durable
steps (C34–C39): each `step.run` is done once per run and its value kept, so that a later
delivery of the same run (a retry, a resume after a sleep) returns it without calling the
function again; `step.sleep` ends the delivery and resumes the run later, holding no worker.
What keeps the values depends on the backend (`jobs_core.steps.engine` for Celery, Dramatiq and
inline; Inngest's own steps on Inngest); the handler reads the same on every one.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pydantic import BaseModel
from typing_extensions import ParamSpec

if TYPE_CHECKING:
    from ..events.event import Event
    from ..jobs.job import Job

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Params = ParamSpec("Params")


class Steps(abc.ABC):
    """The steps of an async handler's run: `await step.run(...)`, `await step.sleep(...)`."""

    @overload
    async def run(
        self,
        step_id: str,
        fn: Callable[Params, Awaitable[T]],
        /,
        *args: Params.args,
        **kwargs: Params.kwargs,
    ) -> T: ...

    @overload
    async def run(
        self, step_id: str, fn: Callable[Params, T], /, *args: Params.args, **kwargs: Params.kwargs
    ) -> T: ...

    async def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` (sync or async) once in this run and return its value; a
        later delivery of the run returns the kept value, read back through `fn`'s return
        annotation, without calling `fn`. A failure ends the delivery; the run tries the step
        again after the job's backoff, up to `Retry.attempts` more times, then raises
        `StepFailedError` here (C34–C36). Several `run` calls awaited together (with
        `asyncio.gather`) run concurrently (C38)."""
        return await self._run(step_id, fn, args, kwargs)

    async def sleep(self, step_id: str, duration: timedelta) -> None:
        """Resume the run no earlier than `duration` from now (at most a year), holding no
        worker while it waits (C37); a finished sleep is not slept again."""
        await self._sleep_until(step_id, lambda: datetime.now(timezone.utc) + duration)

    async def sleep_until(self, step_id: str, at: datetime) -> None:
        """Resume the run no earlier than `at` (an aware datetime, at most a year ahead)."""
        await self._sleep_until(step_id, lambda: at)

    async def send_event(self, step_id: str, event: Event[M], data: M | Mapping[str, Any]) -> str:
        """Send `event` once in this run, however often the handler is replayed (C41); its
        id (the same on every replay) is returned."""
        return await self._send_event(step_id, event, data)

    async def wait_for_event(
        self, step_id: str, event: Event[M], *, match: str, timeout: timedelta
    ) -> M | None:
        """The first `event` sent after this wait began whose `match` field equals the run's
        payload's, or None when `timeout` passes first (C42). The run holds no worker while it
        waits; an event sent before the wait began is never seen."""
        found: M | None = await self._wait_for_event(step_id, event, match, timeout)
        return found

    async def invoke(
        self, step_id: str, job: Job[Any, Any], payload: BaseModel | Mapping[str, Any]
    ) -> Any:
        """Dispatch `job` once in this run and return its handler's return value (read
        through the handler's return annotation); `StepFailedError` when it gives up (C43)."""
        return await self._invoke(step_id, job, payload)

    @abc.abstractmethod
    async def _run(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...

    @abc.abstractmethod
    async def _sleep_until(self, step_id: str, at: Callable[[], datetime]) -> None: ...

    @abc.abstractmethod
    async def _send_event(self, step_id: str, event: Event[Any], data: Any) -> str: ...

    @abc.abstractmethod
    async def _wait_for_event(
        self, step_id: str, event: Event[Any], match: str, timeout: timedelta
    ) -> Any: ...

    @abc.abstractmethod
    async def _invoke(self, step_id: str, job: Job[Any, Any], payload: Any) -> Any: ...


class StepsSync(abc.ABC):
    """The steps of a sync handler's run: `step.run(...)`, `step.sleep(...)`, as `Steps` does
    them (see there), without `await`."""

    @overload
    def run(
        self,
        step_id: str,
        fn: Callable[Params, Awaitable[T]],
        /,
        *args: Params.args,
        **kwargs: Params.kwargs,
    ) -> T: ...

    @overload
    def run(
        self, step_id: str, fn: Callable[Params, T], /, *args: Params.args, **kwargs: Params.kwargs
    ) -> T: ...

    def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """`Steps.run` for a sync handler (`fn` may still be async: it runs to its end)."""
        return self._run(step_id, fn, args, kwargs)

    def sleep(self, step_id: str, duration: timedelta) -> None:
        """`Steps.sleep` for a sync handler."""
        self._sleep_until(step_id, lambda: datetime.now(timezone.utc) + duration)

    def sleep_until(self, step_id: str, at: datetime) -> None:
        """`Steps.sleep_until` for a sync handler."""
        self._sleep_until(step_id, lambda: at)

    def send_event(self, step_id: str, event: Event[M], data: M | Mapping[str, Any]) -> str:
        """`Steps.send_event` for a sync handler."""
        return self._send_event(step_id, event, data)

    def wait_for_event(
        self, step_id: str, event: Event[M], *, match: str, timeout: timedelta
    ) -> M | None:
        """`Steps.wait_for_event` for a sync handler."""
        found: M | None = self._wait_for_event(step_id, event, match, timeout)
        return found

    def invoke(
        self, step_id: str, job: Job[Any, Any], payload: BaseModel | Mapping[str, Any]
    ) -> Any:
        """`Steps.invoke` for a sync handler."""
        return self._invoke(step_id, job, payload)

    @abc.abstractmethod
    def _run(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...

    @abc.abstractmethod
    def _sleep_until(self, step_id: str, at: Callable[[], datetime]) -> None: ...

    @abc.abstractmethod
    def _send_event(self, step_id: str, event: Event[Any], data: Any) -> str: ...

    @abc.abstractmethod
    def _wait_for_event(
        self, step_id: str, event: Event[Any], match: str, timeout: timedelta
    ) -> Any: ...

    @abc.abstractmethod
    def _invoke(self, step_id: str, job: Job[Any, Any], payload: Any) -> Any: ...
