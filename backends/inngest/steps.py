"""A job's `step` on Inngest: the SDK's own steps, which the Inngest server keeps (C34–C39).

`step.run` is the SDK's `ctx.step.run` (the server memoises its value and calls the function
again for the next step), `step.sleep` its `ctx.step.sleep_until` (the server waits; no worker
does), and steps awaited together with `asyncio.gather` become one `ctx.group.parallel` (the
server runs them side by side). Around each, the rules every backend keeps
(`jobs_core.steps.rules`): ids and occurrences, limits, values as JSON read back through the
step function's return annotation, the same events, and attempts counted per step with the
job's own backoff:

- a failed attempt leaves the SDK's step as a `RetryAfterError` (the SDK hands it to the function
  level) and the run is retried after the job's backoff; Inngest counts attempts per step;
- the last attempt's error is left to the SDK, which records the step as failed; the next call
  raises `inngest.StepError` there, which is `StepFailedError` in the handler;
- `PermanentError` and `StepError` leave as `NonRetriableError`: the run gives up.

The SDK's request (attempt, memoised steps, the order steps completed in) tells whether a call
is the run's first (`started`) and whether it is the one a sleep ended (`run.resumed`).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import inngest
from inngest._internal.step_lib import ResponseInterrupt

from jobs_core.calling import run_on_thread_loop
from jobs_core.errors import RetryLater, StepFailedError
from jobs_core.instrumentation import describe_error
from jobs_core.jobs.job import Job
from jobs_core.jobs.payload import validate_payload
from jobs_core.steps.rules import (
    GIVE_UP_AT_ONCE,
    RecordEvent,
    StepKeys,
    StepRetry,
    check_wait,
    current_step,
    from_json,
    output_adapter,
    sleep_end,
    to_json,
)
from jobs_core.steps.steps import Steps, StepsSync

from .dispatcher import GAVE_UP_AT


def sdk_request(ctx: inngest.Context | inngest.ContextSync) -> Any:
    """The executor's request of this call, as the SDK parsed it (inngest-py 0.5 keeps it on
    the step object; tests/inngest/test_steps_native.py checks that it still does)."""
    return ctx.step._execution._request


def hashed(key: str) -> str:
    """A step key as the SDK and the server name it (`transforms.hash_step_id`)."""
    return hashlib.sha1(key.encode()).hexdigest()


class InngestRunSteps:
    """The `BackendSteps` of one call of a job's Inngest function."""

    def __init__(self, ctx: inngest.Context | inngest.ContextSync, client: Any = None) -> None:
        self.ctx = ctx
        self.client = client
        """The SDK client, which sends a run's events."""
        request = sdk_request(ctx)
        self.attempt = int(request.ctx.attempt)
        self.memoised = set(request.steps or {})
        self.stack = list(request.ctx.stack.stack or [])

    @property
    def first_delivery(self) -> bool:
        return self.attempt == 0 and not self.memoised

    def bind(self, job: Job[Any, Any], record: RecordEvent) -> Steps | StepsSync:
        state = _Call(job, self, record)
        return InngestSteps(state) if job.handler_is_async else InngestStepsSync(state)

    def resumes_after(self, key: str) -> bool:
        """Whether this call is the first after the sleep `key` ended."""
        return self.attempt == 0 and bool(self.stack) and self.stack[-1] == hashed(key)


@dataclass
class _Call:
    """What the steps of one call share: the job, the call, the events, the keys."""

    job: Job[Any, Any]
    run: InngestRunSteps
    record: RecordEvent
    keys: StepKeys = field(init=False)
    stashed: dict[str, BaseException] = field(default_factory=dict)
    """Errors carried out of the SDK's step as its own error types, raised again outside."""

    def __post_init__(self) -> None:
        self.keys = StepKeys(self.job.name)

    def failed(self, key: str, error: Exception) -> Exception:
        """What leaves the SDK's step for `error`, a failed attempt of step `key`."""
        attempt = self.run.attempt
        if isinstance(error, GIVE_UP_AT_ONCE):
            self.stashed[key] = error
            return inngest.NonRetriableError(describe_error(error), quiet=True)
        if attempt >= self.job.retry.attempts:  # the SDK records the step as failed
            self.record("step.failed", key, attempt, error)
            return error
        retry = self.job.retry
        delay = error.delay if isinstance(error, RetryLater) else retry.backoff(attempt + 1)
        self.record("step.failed", key, attempt, error, delay)
        self.stashed[key] = StepRetry(error, delay)
        return inngest.RetryAfterError(f"step {key!r} will retry", retry_after=delay, quiet=True)

    @contextmanager
    def attempt(self, key: str) -> Iterator[None]:
        """One attempt of step `key` inside the SDK's step: its events, the current step, and
        its error as the SDK must see it."""
        attempt = self.run.attempt
        self.record("step.started", key, attempt)
        token = current_step.set(key)
        try:
            yield
        except Exception as error:
            raise self.failed(key, error) from error
        finally:
            current_step.reset(token)
        self.record("step.completed", key, attempt)

    def body(self, key: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """The async function the SDK runs as the step, when it runs it now."""

        async def step() -> Any:
            with self.attempt(key):
                value = fn(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
                return to_json(self.job.name, key, output_adapter(fn), value)[0]

        return step

    def body_sync(self, key: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """The function the SDK runs as the step of a sync handler."""

        def step() -> Any:
            with self.attempt(key):
                value = fn(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = run_on_thread_loop(_awaited(value), "an async step function")
                return to_json(self.job.name, key, output_adapter(fn), value)[0]

        return step

    def outcome(self, key: str, error: Exception) -> BaseException:
        """The error the handler sees when the SDK's step raised `error`."""
        if isinstance(error, inngest.StepError):  # failed for good in an earlier call
            return StepFailedError(self.job.name, key, f"{error.name}: {error.message}")
        return self.stashed.pop(key, error)

    def event_id(self, key: str) -> str:
        """The id of the event step `key` sends: the same on every call of the run (C41)."""
        return f"{self.job.name}:{self.run.ctx.run_id}:{key}"

    def wait_expression(self, key: str, event: Any, match: Any, timeout: Any) -> str:
        """Inngest's `if` for a wait on `match` (C42), once `check_wait` accepts the wait."""
        check_wait(self.job.name, key, event, match, timeout, self.job.payload_model)
        return f"event.data.{match} == async.data.{match}"

    def child_failed(self, key: str, error: Exception) -> BaseException:
        """What the handler sees when an invoked child failed: `StepFailedError` with the
        child's own error (as its worker described it)."""
        if isinstance(error, inngest.StepError):
            message = error.message
            ours = GAVE_UP_AT.match(message)
            told = ours.group(2) if ours else f"{error.name}: {message}"
            return StepFailedError(self.job.name, key, told)
        return error

    @contextmanager
    def suspending(self, key: str, invoked: Any = None) -> Iterator[None]:
        """Around the SDK's sleep, wait or invoke of step `key`, which suspends the run the
        first time (the SDK's interrupt) and returns when the run is resumed. For an invoke,
        `invoked` is the child job: its failure reaches the handler as `StepFailedError`."""
        try:
            yield
        except BaseException as interrupt:
            if invoked is not None and isinstance(interrupt, Exception):
                raise self.child_failed(key, interrupt)  # noqa: B904 - its own cause
            if isinstance(interrupt, ResponseInterrupt):
                self.record("run.suspended", key)
            raise
        if self.run.resumes_after(key):
            self.record("run.resumed", key)


@dataclass
class _Pending:
    step_id: str
    key: str
    fn: Callable[..., Any]
    args: Any
    kwargs: Any
    done: asyncio.Future[Any] | None = None


class InngestSteps(Steps):
    """`Steps` of an async handler on Inngest."""

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._batch: list[_Pending] = []

    async def _run(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        pending = _Pending(step_id, self._call.keys.next(step_id), fn, args, kwargs)
        self._batch.append(pending)
        if len(self._batch) > 1:  # another call of this tick leads the batch
            pending.done = asyncio.get_running_loop().create_future()
            return await pending.done
        await asyncio.sleep(0)  # the steps started together with this one join the batch
        batch, self._batch = self._batch, []
        if len(batch) == 1:
            return await self._one(pending)
        try:
            values = await self._ctx.group.parallel(tuple(self._thunk(p) for p in batch))
        except BaseException as error:
            for other in batch[1:]:
                assert other.done is not None
                other.done.set_exception(error)
            raise
        for other, value in zip(batch[1:], values[1:], strict=True):
            assert other.done is not None
            other.done.set_result(value)
        return values[0]

    @property
    def _ctx(self) -> inngest.Context:
        return cast(inngest.Context, self._call.run.ctx)

    def _thunk(self, pending: _Pending) -> Callable[[], Awaitable[Any]]:
        return lambda: self._one(pending)

    async def _one(self, pending: _Pending) -> Any:
        call = self._call
        body = call.body(pending.key, pending.fn, pending.args, pending.kwargs)
        try:
            data = await self._ctx.step.run(pending.step_id, body)
        except Exception as error:
            raise call.outcome(pending.key, error)  # noqa: B904 - its own cause
        return from_json(output_adapter(pending.fn), data)

    async def _sleep_until(self, step_id: str, at: Callable[[], datetime]) -> None:
        call = self._call
        key = call.keys.next(step_id)
        until = sleep_end(call.job.name, key, at)
        with call.suspending(key):
            await self._ctx.step.sleep_until(step_id, until)

    async def _send_event(self, step_id: str, event: Any, data: Any) -> str:
        call, client = self._call, self._call.run.client

        async def send() -> str:
            key = current_step.get() or ""
            body = event.validate(data).model_dump(mode="json")
            sent = inngest.Event(name=event.name, data=body, id=call.event_id(key))
            await client.send(sent)
            return call.event_id(key)

        return str(await self._run(step_id, send, (), {}))

    async def _wait_for_event(
        self, step_id: str, event: Any, match: str, timeout: timedelta
    ) -> Any:
        call = self._call
        key = call.keys.next(step_id)
        expression = call.wait_expression(key, event, match, timeout)
        with call.suspending(key):
            found = await self._ctx.step.wait_for_event(
                step_id, event=event.name, if_exp=expression, timeout=timeout
            )
        return None if found is None else event.validate(found.data)

    async def _invoke(self, step_id: str, job: Any, payload: Any) -> Any:
        call = self._call
        key = call.keys.next(step_id)
        data = validate_payload(job, payload).model_dump(mode="json")
        with call.suspending(key, invoked=job):
            value = await self._ctx.step.invoke_by_id(step_id, function_id=job.name, data=data)
        return from_json(output_adapter(job.handler), value)


class InngestStepsSync(StepsSync):
    """`StepsSync` of a sync handler on Inngest."""

    def __init__(self, call: _Call) -> None:
        self._call = call

    @property
    def _ctx(self) -> inngest.ContextSync:
        return cast(inngest.ContextSync, self._call.run.ctx)

    def _run(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        call = self._call
        key = call.keys.next(step_id)
        body = call.body_sync(key, fn, args, kwargs)
        try:
            data = self._ctx.step.run(step_id, body)
        except Exception as error:
            raise call.outcome(key, error)  # noqa: B904 - its own cause
        return from_json(output_adapter(fn), data)

    def _sleep_until(self, step_id: str, at: Callable[[], datetime]) -> None:
        call = self._call
        key = call.keys.next(step_id)
        until = sleep_end(call.job.name, key, at)
        with call.suspending(key):
            self._ctx.step.sleep_until(step_id, until)

    def _send_event(self, step_id: str, event: Any, data: Any) -> str:
        call, client = self._call, self._call.run.client

        def send() -> str:
            key = current_step.get() or ""
            body = event.validate(data).model_dump(mode="json")
            client.send_sync(inngest.Event(name=event.name, data=body, id=call.event_id(key)))
            return call.event_id(key)

        return str(self._run(step_id, send, (), {}))

    def _wait_for_event(self, step_id: str, event: Any, match: str, timeout: timedelta) -> Any:
        call = self._call
        key = call.keys.next(step_id)
        expression = call.wait_expression(key, event, match, timeout)
        with call.suspending(key):
            found = self._ctx.step.wait_for_event(
                step_id, event=event.name, if_exp=expression, timeout=timeout
            )
        return None if found is None else event.validate(found.data)

    def _invoke(self, step_id: str, job: Any, payload: Any) -> Any:
        call = self._call
        key = call.keys.next(step_id)
        data = validate_payload(job, payload).model_dump(mode="json")
        with call.suspending(key, invoked=job):
            value = self._ctx.step.invoke_by_id(step_id, function_id=job.name, data=data)
        return from_json(output_adapter(job.handler), value)


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value
