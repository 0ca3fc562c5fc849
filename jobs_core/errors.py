"""The error types of jobs_core: every error the library raises is a `JobsError`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any


class JobsError(Exception):
    """Base class of every error raised by jobs_core and its backends."""


class JobConfigError(JobsError):
    """A job definition or the library's configuration is wrong; the message says what to change."""


class JobPayloadError(JobsError, ValueError):
    """A payload does not fit its job's model (at dispatch, or when a worker parses a message).

    `errors` is pydantic's error list (`ValidationError.errors()`), or one synthetic entry when
    the payload was not even a mapping or model instance.
    """

    def __init__(self, job_name: str, errors: Sequence[dict[str, Any]], message: str = "") -> None:
        self.job_name = job_name
        self.errors: list[dict[str, Any]] = [dict(e) for e in errors]
        super().__init__(message or _describe_payload_errors(job_name, self.errors))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_name, self.errors, str(self)))


def _describe_payload_errors(job_name: str, errors: Sequence[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(payload)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"invalid payload for job {job_name!r}: " + "; ".join(parts) + more


class DispatchError(JobsError):
    """The backend could not accept the job (refused, down, timed out): nothing was enqueued.

    Except in `accepted`: the receipts of jobs of the same `dispatch_many` that the backend took
    before it refused the rest (Inngest handles a request's events one by one); those will run.
    """

    accepted: tuple[Any, ...] = ()

    def __init__(self, job_name: str, cause: BaseException | str) -> None:
        self.job_name = job_name
        self.cause = cause
        reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"could not dispatch job {job_name!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_name, str(self.cause)))


class WorkerLostError(JobsError):
    """The backend failed a run whose last attempt ended without the worker's answer (the
    process died, the call timed out or was refused, the run was cancelled). `on_failure` gets
    it from the backend's own failure notice, since the worker never saw the give-up."""


class DispatchArgumentError(JobsError, TypeError, ValueError):
    """`dispatch` was called with an argument it cannot use (not a `Job`, a negative `delay`, a
    naive `run_at`, both `delay` and `run_at`, an empty idempotency key, a `dispatch_many` item
    that is not a pair): a mistake in the calling code, so nothing was sent and retrying cannot
    help. Also a `TypeError` and a `ValueError`, which these mistakes raised before."""


class UnknownJobError(JobsError, LookupError):
    """A worker received a message for a job its registry does not have (C17)."""


class PermanentError(JobsError):
    """Raised by a handler for a failure that retrying cannot fix: the job gives up at once."""


class RetryLater(JobsError):
    """Raised by a handler to be retried after at least `delay`; it counts as one attempt."""

    def __init__(self, delay: timedelta | float, message: str = "") -> None:
        self.delay = delay if isinstance(delay, timedelta) else timedelta(seconds=delay)
        if self.delay < timedelta(0):
            raise ValueError(f"RetryLater delay must not be negative, got {self.delay}")
        super().__init__(message or f"retry requested after {self.delay.total_seconds():g}s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.delay, str(self)))


class JobFailedError(JobsError):
    """Inline backend: the job gave up and no `on_error` callback was given."""

    def __init__(self, job_name: str, error: BaseException, runs: int) -> None:
        self.job_name = job_name
        self.error = error
        self.runs = runs
        super().__init__(
            f"job {job_name!r} gave up after {runs} run(s): {type(error).__name__}: {error}"
        )


class StepError(JobsError):
    """A step used in a way no retry can fix: an output that cannot be stored (not JSON, over
    4 MB, an integer beyond ±(2**53 - 1)), a step started inside another step, more than 1,000
    steps in a run, an empty step id, a sleep of more than a year (C34, C37). The run gives up
    at once: `on_failure` runs and `failed` is recorded. Names the job and the step."""

    def __init__(self, job_name: str, step_id: str, message: str) -> None:
        self.job_name = job_name
        self.step_id = step_id
        super().__init__(f"job {job_name!r}, step {step_id!r}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.job_name, self.step_id, str(self)))


class StepFailedError(JobsError):
    """Raised inside a handler by a step that ran out of attempts (C36): `step_id` and the last
    error (`error`, also its `__cause__`). The handler may catch it and go on; uncaught, the run
    gives up and `on_failure` runs once."""

    def __init__(self, job_name: str, step_id: str, error: BaseException | str) -> None:
        self.job_name = job_name
        self.step_id = step_id
        self.error = error
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        super().__init__(f"job {job_name!r}, step {step_id!r} failed: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_name, self.step_id, str(self.error)))


def _rebuild(cls: type[StepError], job_name: str, step_id: str, text: str) -> StepError:
    error = cls.__new__(cls)
    error.job_name, error.step_id = job_name, step_id
    Exception.__init__(error, text)
    return error
