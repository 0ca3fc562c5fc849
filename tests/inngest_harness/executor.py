"""The executor half of the stand-in Inngest server: drives runs against the SDK over HTTP.

For each run it POSTs the executor request to the function's registered URL
(``?fnId=<app>-<fn>&stepId=step``), signed in cloud mode, and follows the SDK's answer the way
Inngest does: 200 = completed; 206 = step ops (``StepRun``/``StepFailed`` memoised into
``steps``, ``StepError`` retried then memoised, ``StepPlanned`` targeted next via ``stepId``,
``Sleep`` waited); planned steps are called side by side, one call per step targeted with
``stepId``, and the run goes on once all of them are answered, as Inngest runs parallel steps;
anything else = error, retried up to the function's ``retries``
(``x-inngest-no-retry: true`` stops at once, ``retry-after`` sets the time of the next try,
clamped as Inngest clamps it, otherwise ``retry_wait``: a call refused, cut or timed out counts
as a failed attempt too, as on Inngest). Attempts are counted per step, as Inngest does: ``ctx.attempt``
goes back to 0 after each step that completes. A function's ``concurrency`` and ``throttle``
hold a call back until its turn (``flow.FlowGate``).

A scheduler thread waits on a condition for the next due call and hands it to a small thread
pool; a run has one call in flight, or one per planned step while its parallel steps run (those
calls pass the flow gate without taking a turn). While paused (the server down for a restart) no
call starts; the runs wait in the schedule.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol

import httpx

from .flow import FlowGate, parse_duration
from .protocol import (
    H_NO_RETRY,
    H_REQUEST_ID,
    H_RETRY_AFTER,
    H_SERVER_KIND,
    H_SIGNATURE,
    Q_STEP_ID,
    UNSPECIFIED_STEP_ID,
    canonical_json,
    new_ulid,
    parse_retry_after,
    parse_wall_time,
    sign_body,
    verify_response_signature,
    wait_matches,
)
from .records import Attempt, RegisteredFunction, Run

_USER_AGENT = "inngest-test-harness (stand-in for the Inngest executor)"
_MAX_CALLS_PER_RUN = 1000
"""Guards against an SDK answering 206 forever: the run fails past this many calls."""


class ExecutorSettings(Protocol):
    """The knobs the executor reads on every call (tests may change them mid-test)."""

    signing_key: str | None
    signature_offset: float

    def retry_wait(self, attempt: int) -> float: ...

    @property
    def server_kind(self) -> Literal["dev", "cloud"]: ...


@dataclasses.dataclass
class _RunState:
    """Executor-private progress of a run (what Inngest keeps in its state store)."""

    fn: RegisteredFunction
    attempt: int = 0
    stack: list[str] = dataclasses.field(default_factory=list)
    planned: list[str] = dataclasses.field(default_factory=list)
    step_attempts: dict[str, int] = dataclasses.field(default_factory=dict)
    """Attempts of each planned step, called on its own (Inngest counts attempts per step)."""
    not_before: float = 0.0
    """Wall-clock epoch seconds before which the next call must not start."""


class Executor:
    """Runs functions for the harness; shares the harness's lock and change condition."""

    def __init__(
        self,
        *,
        settings: ExecutorSettings,
        lock: threading.RLock,
        changed: threading.Condition,
        on_failed: Callable[[Run], str | None],
        call_timeout: float,
        workers: int,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """
        Args:
            settings: signing key, retry delay, signature offset, server kind.
            lock: the harness lock; every record change happens under it.
            changed: notified (lock held) after every change, for test waits.
            on_failed: called (lock held) when a run fails for good; returns the id of the
                ``inngest/function.failed`` event it emitted, if any.
            call_timeout: seconds for one HTTP call to the SDK.
            workers: calls in flight at once.
            transport: how calls reach the app (None: over the network; else this httpx
                transport, e.g. one that calls an ASGI app in process).
        """
        self._settings = settings
        self._lock = lock
        self._changed = changed
        self._wake = threading.Condition(lock)
        self._on_failed = on_failed
        self.runs: dict[str, Run] = {}
        self._states: dict[str, _RunState] = {}
        self._heap: list[tuple[float, int, str, str | None]] = []
        self._seq = 0
        self._flow = FlowGate()
        self._stopping = False
        self._paused = False
        self._started_calls = 0
        """Calls past the pause check and not yet answered (what `pause` waits for)."""
        self._http = httpx.Client(
            timeout=call_timeout,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"user-agent": _USER_AGENT},
            transport=transport,
        )
        self._waits: dict[tuple[str, str], tuple[str, str | None, float]] = {}
        """(run, step) -> (event name, if expression, deadline): runs waiting for an event."""
        self._children: dict[str, tuple[str, str]] = {}
        """child run -> (parent run, step) of ``InvokeFunction``."""
        self.functions: Callable[[str], RegisteredFunction | None] = lambda _: None
        """How a function is found by its id (the harness sets it: invoke starts one)."""
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="inngest-harness-call")
        self._thread = threading.Thread(
            target=self._scheduler_loop, name="inngest-harness-scheduler", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop scheduling, let in-flight calls end, close the client. True if all stopped."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._thread.join(timeout)
        self._http.close()
        return not self._thread.is_alive()

    def pause(self, timeout: float) -> bool:
        """Start no call until `resume`; wait for the calls already made to be answered. True
        if they were within `timeout`."""
        with self._lock:
            self._paused = True
            return self._wake.wait_for(lambda: self._started_calls == 0, timeout)

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._wake.notify_all()

    # ------------------------------------------------------------------ runs

    def new_run(self, fn: RegisteredFunction, event: dict[str, Any]) -> Run:
        """Create a run of ``fn`` for ``event``; first call at the event's ``ts`` (lock held)."""
        run = Run(run_id=new_ulid(), function_id=fn.id, event=event, created_at=time.time())
        self.runs[run.run_id] = run
        self._states[run.run_id] = _RunState(fn=fn)
        self._schedule(run.run_id, float(event.get("ts") or 0) / 1000.0)
        self._changed.notify_all()
        return run

    def failed_run(self, function_id: str, event: dict[str, Any], error: Any) -> Run:
        """Record a run that failed before any call (e.g. unknown function; lock held)."""
        now = time.time()
        run = Run(
            run_id=new_ulid(),
            function_id=function_id,
            event=event,
            status="failed",
            error=error,
            created_at=now,
            finished_at=now,
        )
        self.runs[run.run_id] = run
        self._changed.notify_all()
        return run

    # ------------------------------------------------------------------ scheduling

    def _schedule(self, run_id: str, not_before: float, target: str | None = None) -> None:
        """Queue the run's next call for no earlier than wall time ``not_before``: the call
        that runs planned step ``target``, or (None) the run's next call (lock held)."""
        if self._stopping:
            return
        if target is None:
            self._states[run_id].not_before = not_before
        due = time.monotonic() + max(0.0, not_before - time.time())
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, run_id, target))
        self._wake.notify_all()

    def _scheduler_loop(self) -> None:
        with self._lock:
            while not self._stopping:
                if self._paused or not self._heap:
                    self._wake.wait()
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                _, _, run_id, target = heapq.heappop(self._heap)
                self._pool.submit(self._call, run_id, target)

    # ------------------------------------------------------------------ one call

    def _call(self, run_id: str, target: str | None = None) -> None:
        """Make one executor call for ``run_id`` (for its planned step ``target``, if given)
        and act on the SDK's answer."""
        settings = self._settings
        with self._lock:
            if self._stopping:
                return
            run, state = self.runs[run_id], self._states[run_id]
            if run.status != "running":  # a parallel step's call, after the run failed
                return
            if target is not None and target.startswith("timeout:"):
                self._wait_timed_out(run, state, target.removeprefix("timeout:"))
                return
            if self._paused:  # handed to the pool before the pause: back to the schedule
                self._schedule(run_id, state.not_before if target is None else time.time(), target)
                return
            if target is None and time.time() < state.not_before:  # the clocks disagreed
                self._schedule(run_id, state.not_before)
                return
            if target is None:
                turn = self._flow.admit(state.fn, run, time.time())
                if turn is not None:  # not its turn: at that time, or when a slot is released
                    if turn != float("inf"):
                        self._schedule(run_id, turn)
                    return
            if len(run.attempts) >= _MAX_CALLS_PER_RUN:
                self._finish(run, "failed", error={"message": "harness: too many calls"})
                return
            step_id = target or UNSPECIFIED_STEP_ID
            attempt_no = state.attempt if target is None else state.step_attempts.get(target, 0)
            request: dict[str, Any] = {
                "ctx": {
                    "attempt": attempt_no,
                    "disable_immediate_execution": False,
                    "max_attempts": state.fn.retries + 1,
                    "run_id": run.run_id,
                    "stack": {"stack": list(state.stack)},
                },
                "event": run.event,
                "events": [run.event],
                "steps": copy.deepcopy(run.steps),
                "use_api": False,
            }
            attempt = Attempt(
                attempt=attempt_no, step_id=step_id, started_at=time.time(), request=request
            )
            run.attempts.append(attempt)
            self._changed.notify_all()
            url = _with_query(state.fn.url, {Q_STEP_ID: step_id})
            body = canonical_json(request)
            self._started_calls += 1

        headers = {
            "content-type": "application/json",
            H_SERVER_KIND: settings.server_kind,
            H_REQUEST_ID: new_ulid(),
        }
        if settings.signing_key is not None:
            stamp = int(time.time() + settings.signature_offset)
            headers[H_SIGNATURE] = sign_body(body, settings.signing_key, timestamp=stamp)
        status: int | None = None
        res_headers: dict[str, str] = {}
        res_body: Any = None
        raw = b""
        error: str | None = None
        try:
            res = self._http.post(url, content=body, headers=headers)
            status, raw = res.status_code, res.content
            res_headers = {k.lower(): v for k, v in res.headers.items()}
            res_body = parse_body(raw)
            if status == 201 and isinstance(res_body, dict) and "status" in res_body:
                # Streaming mode (INNGEST_STREAMING=force): the real answer is in the body.
                status = int(res_body["status"])
                res_headers.update({k.lower(): v for k, v in res_body.get("headers", {}).items()})
                inner = res_body.get("body")
                res_body = parse_body(inner.encode()) if isinstance(inner, str) else inner
        except (httpx.HTTPError, RuntimeError) as err:  # RuntimeError: client closed on stop
            error = f"{type(err).__name__}: {err}"

        with self._lock:
            attempt.finished_at = time.time()
            self._started_calls -= 1
            self._wake.notify_all()
            if target is None:
                for woken in self._flow.release(run):
                    self._schedule(woken, attempt.finished_at)
            attempt.status_code = status
            attempt.headers = res_headers
            attempt.body = res_body
            attempt.transport_error = error
            if settings.signing_key is not None and status is not None:
                attempt.signature_valid = verify_response_signature(
                    raw, res_headers.get(H_SIGNATURE), settings.signing_key
                )
            if run.status == "running":
                self._on_answer(run, state, attempt, target)
            self._changed.notify_all()

    def _on_answer(
        self, run: Run, state: _RunState, attempt: Attempt, target: str | None = None
    ) -> None:
        """Follow the SDK's answer like Inngest's executor (lock held)."""
        if attempt.status_code == 200 and target is None:
            self._finish(run, "completed", output=attempt.body)
            return
        if attempt.status_code == 206 and isinstance(attempt.body, list):
            self._on_steps(run, state, attempt, target)
            return
        body = attempt.body
        error = body if body is not None else {"message": attempt.transport_error}
        # A function the app no longer serves (function_not_found) is retried like any error.
        no_retry = attempt.headers.get(H_NO_RETRY) == "true"
        if no_retry or attempt.attempt >= state.fn.retries:
            self._finish(run, "failed", error=error)
            return
        retry_at = parse_retry_after(attempt.headers.get(H_RETRY_AFTER))
        if retry_at is None:
            retry_at = time.time() + self._settings.retry_wait(attempt.attempt)
        if target is None:
            state.attempt += 1
        else:
            state.step_attempts[target] = attempt.attempt + 1
        self._schedule(run.run_id, retry_at, target)

    def _on_steps(
        self, run: Run, state: _RunState, attempt: Attempt, target: str | None = None
    ) -> None:
        """206: memoise finished steps, call planned ones side by side, retry errored ones;
        the run's next call waits for every planned step (lock held)."""
        not_before = time.time()
        retry = False
        waiting = False
        no_retry = attempt.headers.get(H_NO_RETRY) == "true"
        newly_planned: list[str] = []

        def memo(step_id: str, value: Any) -> None:
            run.steps[step_id] = value
            state.stack.append(step_id)
            if step_id in state.planned:
                state.planned.remove(step_id)
            state.attempt = 0  # Inngest counts attempts per step

        for op in attempt.body:
            kind, step_id = op.get("op"), str(op.get("id"))
            if kind == "StepRun":
                memo(step_id, {"data": op.get("data")})
            elif kind == "StepFailed":
                memo(step_id, {"error": op.get("error")})
            elif kind == "StepError":
                if no_retry or attempt.attempt >= state.fn.retries:
                    memo(step_id, {"error": op.get("error")})
                else:
                    retry = True
            elif kind == "StepPlanned":
                if step_id not in state.planned and step_id not in run.steps:
                    state.planned.append(step_id)
                    newly_planned.append(step_id)
            elif kind == "WaitForEvent":
                opts = op.get("opts") or {}
                deadline = time.time() + parse_duration(str(opts.get("timeout")))
                self._waits[run.run_id, step_id] = (str(op.get("name")), opts.get("if"), deadline)
                self._schedule(run.run_id, deadline, f"timeout:{step_id}")
                waiting = True
            elif kind == "InvokeFunction":
                opts = op.get("opts") or {}
                child_fn = self.functions(str(opts.get("function_id")))
                payload = opts.get("payload") or {}
                if child_fn is None:
                    memo(step_id, {"error": {"name": "Error", "message": "function not found"}})
                    continue
                event = {
                    "name": "inngest/function.invoked",
                    "data": payload.get("data") or {},
                    "id": new_ulid(),
                    "ts": int(time.time() * 1000),
                }
                child = self.new_run(child_fn, event)
                self._children[child.run_id] = (run.run_id, step_id)
                waiting = True
            elif kind == "Sleep":
                until = parse_wall_time(op.get("name"), time.time())  # the ISO time is in name
                memo(step_id, None)
                if until is not None:
                    not_before = max(not_before, until)
            else:
                self._finish(run, "failed", error={"message": f"harness: unsupported op {kind}"})
                return
        if retry:
            not_before = max(not_before, time.time() + self._settings.retry_wait(attempt.attempt))
            if target is None:
                state.attempt += 1
            else:
                state.step_attempts[target] = attempt.attempt + 1
                self._schedule(run.run_id, not_before, target)
                return
        for step_id in newly_planned:
            self._schedule(run.run_id, not_before, step_id)
        if waiting:  # an event, a timeout or a child's end calls the run again
            return
        if not state.planned:  # every parallel step answered: the run goes on
            self._schedule(run.run_id, not_before)

    def _finish(
        self,
        run: Run,
        status: Literal["completed", "failed"],
        *,
        output: Any = None,
        error: Any = None,
    ) -> None:
        """Close a run; a failure is reported to ``on_failed``; a parent that invoked it gets
        its output, or its error, as the invoke step's value (lock held)."""
        run.status, run.output, run.error, run.finished_at = status, output, error, time.time()
        if status == "failed":
            run.failure_event_id = self._on_failed(run)
        parent = self._children.pop(run.run_id, None)
        if parent is not None:
            parent_run, step_id = self.runs[parent[0]], parent[1]
            value = {"data": output} if status == "completed" else {"error": _error_of(error)}
            self._resume(parent_run, step_id, value)

    def _resume(self, run: Run, step_id: str, value: Any) -> None:
        """A waiting run's step ends with ``value``; the run is called again (lock held)."""
        if run.status != "running":
            return
        state = self._states[run.run_id]
        run.steps[step_id] = value
        state.stack.append(step_id)
        state.attempt = 0
        self._schedule(run.run_id, time.time())
        self._changed.notify_all()

    def event_sent(self, event: dict[str, Any]) -> None:
        """An event arrived: every run waiting for it (name and ``if``) resumes with it, the
        first match only, as Inngest does; a wait never sees an earlier event (lock held)."""
        for (run_id, step_id), (name, expression, _) in list(self._waits.items()):
            run = self.runs[run_id]
            if name != event.get("name") or not wait_matches(expression, run.event, event):
                continue
            del self._waits[run_id, step_id]
            self._resume(run, step_id, event)

    def _wait_timed_out(self, run: Run, state: _RunState, step_id: str) -> None:
        if self._waits.pop((run.run_id, step_id), None) is not None:
            self._resume(run, step_id, None)


def parse_body(raw: bytes) -> Any:
    """JSON when it is JSON, else the text (None for an empty body)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.update(params)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _error_of(error: Any) -> dict[str, Any]:
    """A failed child's error as a step's memoised error (``name``, ``message``)."""
    if isinstance(error, dict):
        return {"name": str(error.get("name") or "Error"), "message": str(error.get("message"))}
    return {"name": "Error", "message": str(error)}
