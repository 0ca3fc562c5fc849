"""Where an integration wraps every dispatch and every run of the process: the seam that
tracing (`jobs_core.contrib.opentelemetry`) uses, on every backend alike.

A `Hook` is told of each batch a dispatcher sends (`dispatching`: it may add headers to each
job, which travel with the job's message) and of each delivery a worker runs (`running`: it
sees those headers again, and the run's outcome). Hooks are process-wide, so that dispatchers
and workers made before a hook was added are wrapped too; with none added, a dispatch or a
run pays one empty-list check.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple, Protocol

HEADERS_KEY = "jobs_core_trace"
"""The name under which a job's headers travel: a Celery message header, a Dramatiq message
option, a reserved key of an Inngest event's data (removed before the payload is read)."""


class Sending(NamedTuple):
    """A job being sent: its name, its dispatch id, and the headers it already carries (the
    outbox relay's row: what its writer's hooks added), which a hook continues from."""

    job_name: str
    dispatch_id: str
    carried: Mapping[str, str] | None = None


class RunScope(Protocol):
    """What a hook learns of one run as it ends."""

    def ended(self, outcome: Any) -> None:
        """The run's `Outcome` (completed, retry, failed, deferred, continued, parked)."""
        ...


class Hook(Protocol):
    """An integration's view of dispatches and runs."""

    def dispatching(
        self, backend: str, jobs: Sequence[Sending]
    ) -> Any:  # a context manager giving one headers dict per job
        """Wrap the send of `jobs` by `backend`; the context manager gives one dict of headers
        per job, to travel with it."""
        ...

    def running(
        self,
        backend: str,
        job_name: str,
        dispatch_id: str | None,
        attempt: int,
        headers: Mapping[str, str],
    ) -> Any:  # a context manager giving a RunScope
        """Wrap one delivery's run; `headers` are those its dispatch added."""
        ...


def step(kind: str, step_id: str | None, attempt: int, error: BaseException | None) -> None:
    """A step event of the run in progress (`step.started`, `step.completed`, `step.failed`,
    `run.suspended`, `run.resumed`), for the hooks that want them (a `step` method)."""
    for hook in list(HOOKS):
        told = getattr(hook, "step", None)
        if told is not None:
            told(kind, step_id, attempt, error)


def measure(name: str, value: float, attributes: Mapping[str, str]) -> None:
    """A gauge's latest value (the outbox's backlog, the scheduler's lag), for the hooks that
    keep them (a `measure` method)."""
    for hook in list(HOOKS):
        told = getattr(hook, "measure", None)
        if told is not None:
            told(name, value, attributes)


HOOKS: list[Hook] = []
"""The hooks of this process (`add`, `remove`)."""


def add(hook: Hook) -> None:
    """Wrap every dispatch and run of this process with `hook` from now on."""
    if hook not in HOOKS:
        HOOKS.append(hook)


def remove(hook: Hook) -> None:
    """Stop wrapping dispatches and runs with `hook`."""
    if hook in HOOKS:
        HOOKS.remove(hook)


def dispatching(backend: str, jobs: Sequence[Sending]) -> Any:
    """Every hook's `dispatching`, nested; one merged headers dict per job."""
    if len(HOOKS) == 1:  # the usual case: that hook's own
        return HOOKS[0].dispatching(backend, jobs)
    return _all_dispatching(backend, jobs)


@contextmanager
def _all_dispatching(backend: str, jobs: Sequence[Sending]) -> Iterator[list[dict[str, str]]]:
    merged: list[dict[str, str]] = [{} for _ in jobs]
    with ExitStack() as stack:
        for hook in list(HOOKS):
            headers = stack.enter_context(hook.dispatching(backend, jobs))
            for mine, theirs in zip(merged, headers):
                mine.update(theirs)
        yield merged


class _Scopes:
    def __init__(self, scopes: list[RunScope]) -> None:
        self.scopes = scopes

    def ended(self, outcome: Any) -> None:
        for scope in self.scopes:
            scope.ended(outcome)


@contextmanager
def running(
    backend: str,
    job_name: str,
    dispatch_id: str | None,
    attempt: int,
    headers: Mapping[str, str] | None,
) -> Iterator[RunScope]:
    """Every hook's `running`, nested."""
    with ExitStack() as stack:
        scopes = [
            stack.enter_context(
                hook.running(backend, job_name, dispatch_id, attempt, headers or {})
            )
            for hook in list(HOOKS)
        ]
        yield _Scopes(scopes)


def carried(value: Any) -> dict[str, str]:
    """The headers a message carried (`HEADERS_KEY`'s value), or none: anything that is not
    a mapping of strings is dropped here (a hook decides what a malformed value means)."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}
