"""The interface every backend's conformance harness implements.

A harness knows how to stand up its backend for one test: a dispatcher (the producer side), a
worker that runs the test's registry, and how to wait for jobs with a deadline. The contract
tests in this folder are written once against `BackendSession` and run on every harness of
their set (`HARNESS_SETS` in tests/conformance/conftest.py: the real brokers, the in-process
fakes, or both).

Adding a backend = one module `harness_<name>.py` with a `make_harness(resources)` function, and
its name in the sets of tests/conformance/conftest.py.

"Nothing (more) happened" is proven, not watched for: `BackendSession.drain()` returns once the
backend holds nothing that could still run (the broker's own drain where it has one), so a
check made after it is final. `stays_false` is left for the few windows that only time can
show (a lease that must be seen renewed); each use says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from jobs_core import JobDispatcherPort, JobRegistry, JobsSettings
from jobs_core.instrumentation import Instrumentation

DRAIN_TIMEOUT = 20.0
"""Seconds `BackendSession.drain` waits for a busy backend before failing the test."""


class BackendSession(Protocol):
    """One test's view of a running backend: dispatch, then wait for what the worker did."""

    dispatcher: JobDispatcherPort
    """Producer side. On the inline backend a job that gives up does not raise from dispatch
    (the harness passes `raise_on_failure=False`), so tests read the same on every backend."""

    def send_raw(self, job_name: str, data: Any) -> None:
        """Put a message for `job_name` with payload `data` on the backend, bypassing validation
        (C16, C17): what an old producer or a hand-written message would do."""
        ...

    def dead_letters(self) -> list[str]:
        """Names of the jobs whose messages were kept where an operator finds them (C17): the
        dead-letter queue, the failed-run list. The inline harness has none: it returns []."""
        ...

    def enqueued_count(self) -> int:
        """How many messages the backend has accepted from the producer so far (C4, C6)."""
        ...

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Return once the backend has nothing left to run for this session: no message
        queued, delayed, or delivered and not yet settled (acknowledged, dead-lettered), no
        run in flight or waiting for its retry. What has not happened when `drain` returns
        will not happen, so "it ran once", "no retry followed the give-up" and "the
        duplicate never ran" are checked right after it, with no waiting window. Fails the
        test (AssertionError) when the backend is still busy after `timeout` seconds.

        Each harness uses its backend's own drain where there is one: Dramatiq's
        `broker.join(queue)` (the queue, its delay queue and the worker's unacked set) and
        `worker.join()`; the Inngest stand-in's `wait_until_idle()` (no run running, none
        waiting for a retry or its time); for Celery, the broker's queue and unacked
        messages for the session's queue, and the worker's requests. Inline runs jobs inside
        `dispatch`: nothing is ever left."""
        ...


class BackendHarness(Protocol):
    """A backend under test."""

    name: str
    """The backend's name, as receipts and events carry it: the same (`celery`) for a backend
    on its real broker and on an in-process fake; the test id tells the harnesses apart."""
    durable: bool
    """True where `delay` and backoff are honoured by waiting (Celery, Dramatiq, Inngest)."""
    has_worker_queue: bool
    """True where unknown names and raw messages reach a worker (false inline: C16/C17 are
    checked there by calling the core directly, as the inline backend has no queue)."""
    reports_unknown_jobs: bool
    """True where a message for an unknown job reaches the worker, which logs it and records
    `failed` (C17). False on Inngest: an event no function takes stays in Inngest's event log."""

    def session(
        self,
        registry: JobRegistry[Any],
        *,
        context: Any,
        instrumentation: Instrumentation,
    ) -> AbstractContextManager[BackendSession]:
        """Start a worker for `registry` and yield a session; stop everything on exit."""
        ...

    def settings(self) -> JobsSettings:
        """Settings that point `create_dispatcher()` at this harness's broker / Event API."""
        ...

    def environment(self) -> dict[str, str]:
        """Extra environment variables the backend reads itself (e.g. the SDK's INNGEST_*)."""
        ...

    def unreachable_dispatcher(
        self, registry: JobRegistry[Any], *, timeout: float, hanging: bool
    ) -> AbstractContextManager[JobDispatcherPort] | None:
        """A dispatcher whose broker / Event API refuses connections (`hanging=False`) or accepts
        and never answers (`hanging=True`), for C7; None where there is no broker (inline)."""
        ...


class StartedSession(Protocol):
    """A session its harness starts on entry and closes on exit, whatever happened."""

    def start(self) -> None:
        """Start the session's worker."""
        ...

    def close(self) -> None:
        """Stop the worker (bounded) and release what the session made."""
        ...


class WorkerHarness:
    """A backend whose worker runs in the test's process, on a broker at `url`: Celery and
    Dramatiq, on a real Redis (tests/conformance/harness_redis.py) or on their library's
    in-process fake (`FakeBrokerHarness`).

    A subclass names its backend (`name`) and broker (`url`) and makes a session
    (`make_session`); what is the same for all of them is here, once: starting the session and
    closing it whatever the test did, and the settings and environment that point
    `create_dispatcher()` at the broker."""

    name: str
    durable = True
    has_worker_queue = True
    reports_unknown_jobs = True

    def __init__(self, resources: Any) -> None:
        self.resources = resources

    @property
    def url(self) -> str:
        """The broker URL a dispatcher made from settings or the environment is given."""
        raise NotImplementedError

    def make_session(
        self, registry: JobRegistry[Any], context: Any, instrumentation: Instrumentation
    ) -> StartedSession:
        """Make (not start) a session: a worker for `registry` and a dispatcher."""
        raise NotImplementedError

    @contextmanager
    def session(
        self, registry: JobRegistry[Any], *, context: Any, instrumentation: Instrumentation
    ) -> Iterator[Any]:
        session = self.make_session(registry, context, instrumentation)
        try:
            session.start()
            yield session
        finally:
            session.close()

    def settings(self) -> JobsSettings:
        return JobsSettings(backend=self.name, broker_url=self.url, queue="conformance")

    def environment(self) -> dict[str, str]:
        return {"JOBS_BROKER_URL": self.url, "JOBS_QUEUE": "conformance"}


class FakeBrokerHarness(WorkerHarness):
    """A `WorkerHarness` on its library's in-process fake broker (kombu's `memory://`,
    Dramatiq's `StubBroker`), which each session makes for itself (`session_type`)."""

    session_type: Callable[[JobRegistry[Any], Any, Instrumentation], StartedSession]
    """Makes a session (its fake broker, a worker for the test's registry, a dispatcher)."""

    def make_session(
        self, registry: JobRegistry[Any], context: Any, instrumentation: Instrumentation
    ) -> StartedSession:
        return self.session_type(registry, context, instrumentation)

    def unreachable_dispatcher(
        self, registry: JobRegistry[Any], *, timeout: float, hanging: bool
    ) -> None:
        """An in-process fake broker cannot be down: C7 runs on the same backend's harness on
        its real broker (`celery`, `dramatiq`)."""
        return None


def keeps_first_of_a_key(harness: Any) -> bool:
    """Whether, of two dispatches with one idempotency key, the run has the first one's payload
    (C9 says it runs once; every harness but the real Inngest server also keeps the first)."""
    return bool(getattr(harness, "keeps_first_of_a_key", True))


def wait_until(
    predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.01, what: str = ""
) -> None:
    """Poll `predicate` until it holds; fail the test with `what` when `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def wait_quiet(
    busy: Callable[[], int], timeout: float, what: str, times: int = 3, interval: float = 0.01
) -> None:
    """Poll `busy()` (how many things are still pending) until it is 0 on `times` polls in a
    row, `interval` apart: a drain for a broker without one of its own. Fails after `timeout`."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < times:
        left = busy()
        quiet = quiet + 1 if left == 0 else 0
        if quiet < times:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what}: {left} still pending after {timeout}s")
            time.sleep(interval)


def stays_false(predicate: Callable[[], bool], duration: float, interval: float = 0.02) -> bool:
    """True when `predicate` stays false for `duration` seconds.

    Only for what no drain can prove, where the clause itself is about time passing (a lease
    that must be seen renewed past its length): to show that a job did NOT run, drain the
    session (`BackendSession.drain`) and check once."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if predicate():
            return False
        time.sleep(interval)
    return not predicate()


class Resources(Protocol):
    """Shared, session-scoped test resources a harness may use."""

    def redis_url(self, db: int = 0) -> str: ...

    @property
    def redis(self) -> Any: ...


Session = Iterator[BackendSession]
