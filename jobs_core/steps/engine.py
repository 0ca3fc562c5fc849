"""The core's step engine: durable steps on a `StepStore`, for Celery, Dramatiq and inline.

A run of a job with steps is delivered as often as it needs: each delivery replays the handler
from its start. The engine reads the run's records once (`StepsRun.load`), returns a kept value
for each step done before, and runs the first step that is not. Whatever stops the handler ends
the delivery with what the worker does next (`Ending`):

- the handler returned: the run is done (`completed`);
- a step failed: its failed attempt is counted (per step, C36) and the run continues after the
  job's backoff for that attempt; a step out of attempts continues at once, and the next
  delivery raises `StepFailedError` from it in the handler, which may catch it;
- a sleep began, or has not ended yet: the run continues at its end (no worker waits, C37);
- the handler raised outside any step: counted as an attempt of the code between steps (the
  count starts again when a step completes), retried after the backoff, or given up;
- `PermanentError`, `StepError`, or an uncaught `StepFailedError`: the run gives up.

A step's value is kept as JSON, read back through the step function's return annotation, so a
model comes back a model; the handler sees that value on the delivery that ran the step too.
Steps are told apart by `(step id, occurrence)`, as Inngest does (`charge`, `charge:1`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, NoReturn

import pydantic_core
from pydantic import TypeAdapter

from ..calling import run_on_thread_loop
from ..dispatch.prepared import keyed_dispatch_id
from ..errors import RetryLater, StepError, StepFailedError
from .rules import (
    GIVE_UP_AT_ONCE,
    MAX_SLEEP,
    RecordEvent,
    StepKeys,
    check_wait,
    current_step,
    failure_text,
    from_json,
    output_adapter,
    sleep_end,
    to_json,
)
from .steps import Steps, StepsSync
from .store import StepStore
from .waits import INVOKE_DONE, Waiter, match_value

_WAITING = object()
"""A wait or invoke step that has not ended yet."""

STORE_AWAY = timedelta(seconds=5)
"""How soon a run whose step store failed is delivered again."""

logger = logging.getLogger("jobs_core.steps")


@dataclass(frozen=True)
class Ending:
    """How a delivery of a run with steps ended, and what comes next: `done` (the handler
    returned), `later` (deliver the run again after `delay`: a step failed, a sleep), `park`
    (the run waits for an event or a child: whatever resumes it delivers it again), or
    `give_up` with `error`. `retried` marks a `later` that retries failed code."""

    kind: Literal["done", "later", "give_up", "park"]
    delay: timedelta = timedelta(0)
    error: BaseException | None = None
    retried: bool = False


class _EndDelivery(BaseException):
    """Ends the delivery from inside the handler (not an `Exception`: a handler's own `except
    Exception` must not swallow it)."""

    def __init__(self, ending: Ending) -> None:
        super().__init__(ending.kind)
        self.ending = ending


class StepsRun:
    """One delivery of one run of `job`: its records, and what its steps do with them."""

    def __init__(
        self,
        job: Any,
        run_id: str,
        store: StepStore,
        record: RecordEvent,
        *,
        wait_sleeps: bool = True,
        wait_backoff: bool = True,
        data: Any = None,
        outbound: Callable[[], Any] | None = None,
    ) -> None:
        self.job = job
        self.data = data
        """The run's payload as its message carried it (a waiting run is delivered again
        with it)."""
        self.outbound = outbound
        """The dispatcher a run sends events and invokes jobs through (None: it cannot)."""
        self.run_id = run_id
        self.store = store
        self.record = record
        self.wait_sleeps = wait_sleeps
        self.wait_backoff = wait_backoff
        """Both False on inline by default: sleeps and retries do not wait (C15, C37)."""
        self.records: dict[str, str] = {}
        self.keys = StepKeys(job.name)
        self._running = 0
        self._all_settled: asyncio.Event | None = None

    def step_began(self) -> None:
        self._running += 1

    def step_ended(self) -> None:
        self._running -= 1
        if self._running == 0 and self._all_settled is not None:
            self._all_settled.set()

    async def steps_settled(self) -> None:
        """Wait for steps still running when the handler stopped (parallel steps whose
        sibling failed or slept): each keeps its value before the delivery ends (C38)."""
        if self._running:
            self._all_settled = asyncio.Event()
            await self._all_settled.wait()

    def load(self) -> None:
        """Read the run's records (once per delivery); record `started` on its first one."""
        self.records = self._store(self.store.load, self.run_id)
        if "started" not in self.records:
            self.record("started")
            self._store(self.store.put, self.run_id, "started", "1")

    @property
    def started_before(self) -> bool:
        return "started" in self.records

    # -- what a step call does ---------------------------------------------------------------

    def begin(self, step_id: Any, fn: Callable[..., Any]) -> tuple[str, bool, Any]:
        """The step's key, whether it is done, and its kept value (read through `fn`'s
        return annotation) if it is. A step out of attempts raises `StepFailedError`."""
        key = self.keys.next(step_id)
        kept = self.records.get(f"s:{key}")
        if kept is not None:
            return key, True, _decode(output_adapter(fn), kept)
        failed = _failures(self.records.get(f"a:{key}"))
        if failed[0] > self.job.retry.attempts:
            raise StepFailedError(self.job.name, key, failed[1])
        self.record("step.started", key, failed[0])
        return key, False, None

    def completed(self, key: str, fn: Callable[..., Any], value: Any) -> Any:
        """Keep `value` (first writer wins) and return it as a later delivery will see it."""
        adapter = output_adapter(fn)
        text = to_json(self.job.name, key, adapter, value)[1].decode()
        kept = self._store(self.store.save, self.run_id, f"s:{key}", text)
        self.records[f"s:{key}"] = kept
        self.record("step.completed", key, _failures(self.records.get(f"a:{key}"))[0])
        return _decode(adapter, kept)

    def failed(self, key: str, error: Exception) -> _EndDelivery:
        """Count the step's failed attempt; the delivery ends (C36)."""
        if isinstance(error, GIVE_UP_AT_ONCE):
            return _EndDelivery(Ending("give_up", error=error))
        attempt = _failures(self.records.get(f"a:{key}"))[0]
        self._store(self.store.put, self.run_id, f"a:{key}", _failure_record(attempt + 1, error))
        if attempt >= self.job.retry.attempts:  # out of attempts: the next delivery says so
            self.record("step.failed", key, attempt, error)
            return _EndDelivery(Ending("later", retried=True))
        delay = (
            error.delay if isinstance(error, RetryLater) else self.job.retry.backoff(attempt + 1)
        )
        self.record("step.failed", key, attempt, error, delay)
        return _EndDelivery(Ending("later", self._backoff(delay), retried=True))

    def sleep_until(self, step_id: Any, when: Callable[[], datetime]) -> None:
        """Pass a sleep that has ended, or end the delivery until it does (C37)."""
        key = self.keys.next(step_id)
        if f"s:{key}" in self.records:
            return
        now = datetime.now(timezone.utc)
        wake = self.records.get(f"z:{key}")
        if wake is None:
            at = sleep_end(self.job.name, key, when)
            until = at if self.wait_sleeps else now  # inline: the run resumes at once
            wake = self._store(self.store.save, self.run_id, f"z:{key}", repr(until.timestamp()))
            self.records[f"z:{key}"] = wake
            self.record("run.suspended", key)
            raise _EndDelivery(Ending("later", max(timedelta(0), until - now)))
        left = float(wake) - now.timestamp()
        if left > 0:  # woken early (a sleep longer than the broker keeps a delay): again
            raise _EndDelivery(Ending("later", timedelta(seconds=left)))
        self.records[f"s:{key}"] = self._store(self.store.save, self.run_id, f"s:{key}", "null")
        self.record("run.resumed", key)

    # -- events, waits and children (C41-C43) ------------------------------------------------

    def dispatcher(self, key: str, what: str) -> Any:
        if self.outbound is None:
            raise StepError(self.job.name, key, f"this worker has no dispatcher to {what} with")
        return self.outbound()

    def event_id(self, key: str) -> str:
        """The id of the event a run's step `key` sends: the same on every replay (C41)."""
        return f"{self.job.name}:{self.run_id}:{key}"

    def waited_event(self, step_id: Any, event: Any, match: str, timeout: Any, payload: Any) -> Any:
        """The event a wait ended with (validated), or None when it timed out; the first
        time, the wait is recorded and the run parks (C42)."""
        key = self.keys.next(step_id)
        over = self._resumed(key)
        if over is not _WAITING:
            return None if over is None else event.validate(over)
        check_wait(self.job.name, key, event, match, timeout, type(payload))
        value = match_value(getattr(payload, match))
        if f"w:{key}" not in self.records:
            self._register(key, event.name, match, value, timeout)
        self.park()

    def invoking(self, step_id: Any, job: Any) -> tuple[str, Any, str | None]:
        """(the key, what the child ended with ({"ok": value} or {"failed": error}) or None
        while it runs, the idempotency key to dispatch it with now or None)."""
        key = self.keys.next(step_id)
        over = self._resumed(key)
        if over is not _WAITING:
            return key, over, None
        return key, None, self.child_to_dispatch(key, job)

    def child_id(self, key: str) -> str:
        """The idempotency key of the child a run's step `key` invokes (dispatched once)."""
        return f"invoke:{self.run_id}:{key}"

    def child_ended(self, key: str, ended: Any, job: Any) -> Any:
        """What `step.invoke` returns (or raises) for a child that ended with `ended`."""
        if "failed" in ended:
            raise StepFailedError(self.job.name, key, str(ended["failed"]))
        return from_json(output_adapter(job.handler), ended.get("ok"))

    def child_to_dispatch(self, key: str, job: Any) -> str | None:
        """The idempotency key to dispatch the child of step `key` with, the first time (after
        the wait for it is recorded: the child may end before this delivery does); None after."""
        if f"w:{key}" in self.records:
            return None
        child_key = self.child_id(key)
        value = match_value(keyed_dispatch_id(job.name, child_key))
        self._register(key, INVOKE_DONE, "dispatch_id", value, MAX_SLEEP)
        return child_key

    def park(self) -> NoReturn:
        raise _EndDelivery(Ending("park"))

    def _resumed(self, key: str) -> Any:
        kept = self.records.get(f"s:{key}")
        if kept is None:
            return _WAITING
        if f"r:{key}" not in self.records:
            self.records[f"r:{key}"] = "1"
            self._store(self.store.put, self.run_id, f"r:{key}", "1")
            self.record("run.resumed", key)
        return pydantic_core.from_json(kept)

    def _register(self, key: str, event: str, field: str, value: str, timeout: timedelta) -> None:
        waits = getattr(self.store, "waits", None)
        if waits is None:
            raise StepError(
                self.job.name,
                key,
                f"{type(self.store).__name__} keeps no waiting runs: waits and invokes need "
                "the Redis step store (JOBS_STEP_STORE_URL=redis://...), or Inngest or inline",
            )
        deadline = time.time() + timeout.total_seconds()
        waiter = Waiter(self.run_id, key, self.job.name, self.data, event, field, value, deadline)
        self._store(waits.register, waiter)
        self.records[f"w:{key}"] = repr(deadline)
        self._store(self.store.put, self.run_id, f"w:{key}", repr(deadline))
        self.record("run.suspended", key)

    def _store(self, call: Callable[..., Any], *args: Any) -> Any:
        """`call(*args)` on the store; a store that fails ends the delivery, and the run comes
        back after `STORE_AWAY` as the same attempt (no step value is lost: one not kept yet
        is computed again)."""
        try:
            return call(*args)
        except Exception as error:
            logger.warning(
                "job %r, run %s: the step store failed (%s: %s); the run is delivered again "
                "in %.0f s",
                self.job.name,
                self.run_id,
                type(error).__name__,
                error,
                STORE_AWAY.total_seconds(),
            )
            raise _EndDelivery(Ending("later", STORE_AWAY)) from error

    # -- how a delivery ends -----------------------------------------------------------------

    def ending(self, error: BaseException | None) -> Ending:
        """How the delivery ends when the handler returned (`error` None) or raised `error`."""
        if error is None:
            return Ending("done")
        if isinstance(error, _EndDelivery):
            return error.ending
        if isinstance(error, GIVE_UP_AT_ONCE):
            return Ending("give_up", error=error)
        if not isinstance(error, Exception):
            raise error
        done = sum(1 for key in self.records if key.startswith("s:"))
        attempt = int(self.records.get(f"b:{done}", "0"))  # starts again when a step completes
        if attempt >= self.job.retry.attempts:
            return Ending("give_up", error=error)
        try:
            self._store(self.store.put, self.run_id, f"b:{done}", str(attempt + 1))
        except _EndDelivery as away:
            return away.ending
        delay = (
            error.delay if isinstance(error, RetryLater) else self.job.retry.backoff(attempt + 1)
        )
        self.record("retrying", None, attempt, error, delay)
        return Ending("later", self._backoff(delay), error=error, retried=True)

    def _backoff(self, delay: timedelta) -> timedelta:
        return delay if self.wait_backoff else timedelta(0)


class EngineSteps(Steps):
    """`Steps` on the core's engine."""

    def __init__(self, run: StepsRun, payload: Any = None) -> None:
        self._state = run
        self.payload = payload

    async def _run(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        key, done, value = self._state.begin(step_id, fn)
        if done:
            return value
        token = current_step.set(key)
        self._state.step_began()
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            return self._state.completed(key, fn, value)
        except Exception as error:
            raise self._state.failed(key, error) from error
        finally:
            current_step.reset(token)
            self._state.step_ended()

    async def _sleep_until(self, step_id: str, at: Callable[[], datetime]) -> None:
        self._state.sleep_until(step_id, at)

    async def _send_event(self, step_id: str, event: Any, data: Any) -> str:
        run = self._state

        async def send() -> str:
            key = current_step.get() or ""
            dispatcher = run.dispatcher(key, "send events")
            receipt = await dispatcher.send(event, data, id=run.event_id(key))
            return str(receipt.event_id)

        return str(await self._run(step_id, send, (), {}))

    async def _wait_for_event(
        self, step_id: str, event: Any, match: str, timeout: timedelta
    ) -> Any:
        return self._state.waited_event(step_id, event, match, timeout, self.payload)

    async def _invoke(self, step_id: str, job: Any, payload: Any) -> Any:
        run = self._state
        key, ended, child_key = run.invoking(step_id, job)
        if ended is not None:
            return run.child_ended(key, ended, job)
        if child_key is not None:
            await run.dispatcher(key, "invoke jobs").dispatch(
                job, payload, idempotency_key=child_key
            )
        run.park()


class EngineStepsSync(StepsSync):
    """`StepsSync` on the core's engine."""

    def __init__(self, run: StepsRun, payload: Any = None) -> None:
        self._state = run
        self.payload = payload

    def _run(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        key, done, value = self._state.begin(step_id, fn)
        if done:
            return value
        token = current_step.set(key)
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = run_on_thread_loop(_awaited(value), "an async step function in Steps")
            return self._state.completed(key, fn, value)
        except Exception as error:
            raise self._state.failed(key, error) from error
        finally:
            current_step.reset(token)

    def _sleep_until(self, step_id: str, at: Callable[[], datetime]) -> None:
        self._state.sleep_until(step_id, at)

    def _send_event(self, step_id: str, event: Any, data: Any) -> str:
        run = self._state

        def send() -> str:
            key = current_step.get() or ""
            dispatcher = run.dispatcher(key, "send events")
            return str(dispatcher.send_sync(event, data, id=run.event_id(key)).event_id)

        return str(self._run(step_id, send, (), {}))

    def _wait_for_event(self, step_id: str, event: Any, match: str, timeout: timedelta) -> Any:
        return self._state.waited_event(step_id, event, match, timeout, self.payload)

    def _invoke(self, step_id: str, job: Any, payload: Any) -> Any:
        run = self._state
        key, ended, child_key = run.invoking(step_id, job)
        if ended is not None:
            return run.child_ended(key, ended, job)
        if child_key is not None:
            run.dispatcher(key, "invoke jobs").dispatch_sync(
                job, payload, idempotency_key=child_key
            )
        run.park()


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


# -- a step's records ------------------------------------------------------------------------


def _failures(text: str | None) -> tuple[int, str]:
    """(failed attempts, the last error) of a step's `a:` record."""
    if text is None:
        return 0, ""
    count, _, error = text.partition(" ")
    return int(count), error


def _failure_record(count: int, error: BaseException) -> str:
    return f"{count} {failure_text(error)}"


def _decode(adapter: TypeAdapter[Any] | None, text: str) -> Any:
    return from_json(adapter, pydantic_core.from_json(text))
