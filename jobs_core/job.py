"""Job definitions: `Job`, the per-app `JobRegistry`, and how a handler's payload model is found."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from pydantic import BaseModel

from ._compat import callable_name, is_async_callable
from .errors import JobConfigError
from .port import JobRequest, P
from .retry import Retry

if TYPE_CHECKING:
    from .schedule import Schedule

C = TypeVar("C")

JOB_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")

Handler = Callable[[P, C], "Awaitable[None] | Any | None"]
FailureHook = Callable[[BaseException, Any, C], "Awaitable[None] | None"]


class Job(Generic[P, C]):
    """One background job: a name, a payload model, a retry policy, a handler and a failure hook.

    Create jobs with `JobRegistry.job` or `JobRegistry.define_job`; a `Job` is immutable once made.
    """

    __slots__ = ("handler", "handler_is_async", "name", "on_failure", "payload_model", "retry")

    def __init__(
        self,
        name: str,
        payload_model: type[P],
        handler: Handler[P, C],
        retry: Retry,
        on_failure: FailureHook[C] | None = None,
    ) -> None:
        self.name = name
        self.payload_model = payload_model
        self.handler = handler
        self.retry = retry
        self.on_failure = on_failure
        self.handler_is_async = is_async_callable(handler)

    async def call(self, payload: P | Mapping[str, Any], ctx: C) -> None:
        """Validate `payload` and run the handler once, without retries: how a test runs a job."""
        from .payload import validate_payload

        model = typing.cast(P, validate_payload(self, payload))
        result = self.handler(model, ctx)
        if inspect.isawaitable(result):
            await result

    def request(
        self,
        payload: P | Mapping[str, Any],
        *,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> JobRequest[P]:
        """One `dispatch_many` item for this job, with options of its own.

        The payload is checked against this job's model by a type checker (and validated, like
        every payload, when it is dispatched).
        """
        return JobRequest(self, payload, delay, run_at, idempotency_key)

    def __repr__(self) -> str:
        return (
            f"Job(name={self.name!r}, payload={self.payload_model.__name__}, "
            f"retry={self.retry!r}, handler={callable_name(self.handler)})"
        )


def _payload_model_from_handler(name: str, handler: Callable[..., Any]) -> type[BaseModel]:
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError) as exc:
        raise JobConfigError(f"job {name!r}: cannot inspect the handler's signature") from exc
    if not params:
        raise JobConfigError(
            f"job {name!r}: the handler takes no parameters; it must be handler(payload, ctx)"
        )
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # unresolvable forward references: fall back to the raw annotation
        hints = {}
    annotation = hints.get(params[0].name, params[0].annotation)
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    raise JobConfigError(
        f"job {name!r}: no payload model; annotate the handler's first parameter with a pydantic "
        f"BaseModel subclass or pass payload=Model (found {annotation!r})"
    )


def _check_arity(name: str, handler: Callable[..., Any]) -> None:
    """Refuse a handler that cannot be called as `handler(payload, ctx)`, at definition."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    try:
        signature.bind(None, None)
    except TypeError as exc:
        raise JobConfigError(
            f"job {name!r}: the handler {callable_name(handler)}{signature} cannot be called as "
            f"handler(payload, ctx): {exc}"
        ) from None


def _check_model(name: str, payload: Any) -> type[BaseModel]:
    if inspect.isclass(payload) and issubclass(payload, BaseModel):
        return payload
    raise JobConfigError(
        f"job {name!r}: payload= must be a pydantic BaseModel subclass, got {payload!r}"
    )


class JobRegistry(Generic[C]):
    """The jobs of one app, bound to its context type `C`; workers are built from a registry."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job[Any, C]] = {}
        self._schedules: dict[str, Schedule[Any]] = {}

    @overload
    def job(
        self,
        name: str,
        *,
        retry: Retry | None = None,
        on_failure: FailureHook[C] | None = None,
    ) -> Callable[[Callable[[P, C], Any]], Job[P, C]]: ...

    @overload
    def job(
        self,
        name: str,
        *,
        payload: type[P],
        retry: Retry | None = None,
        on_failure: FailureHook[C] | None = None,
    ) -> Callable[[Callable[[P, C], Any]], Job[P, C]]: ...

    def job(
        self,
        name: str,
        *,
        payload: type[P] | None = None,
        retry: Retry | None = None,
        on_failure: FailureHook[C] | None = None,
    ) -> Callable[[Callable[[P, C], Any]], Job[P, C]]:
        """Decorator: define a job from `handler(payload, ctx)`; returns the `Job`."""
        if callable(name) and not isinstance(name, str):
            raise JobConfigError(
                f'@jobs.job needs the job\'s name: write @jobs.job("some.name") above '
                f"{callable_name(name)}, not a bare @jobs.job (the name is what every backend "
                "routes by, so it is never guessed from the function)"
            )

        def decorate(handler: Callable[[P, C], Any]) -> Job[P, C]:
            return self.define_job(
                name, payload=payload, retry=retry, handle=handler, on_failure=on_failure
            )

        return decorate

    def define_job(
        self,
        name: str,
        *,
        handle: Callable[[P, C], Any],
        payload: type[P] | None = None,
        retry: Retry | None = None,
        on_failure: FailureHook[C] | None = None,
    ) -> Job[P, C]:
        """Define and register a job without a decorator; every check runs here, not at a worker."""
        if not isinstance(name, str) or not JOB_NAME_PATTERN.match(name):
            raise JobConfigError(
                f"invalid job name {name!r}: use letters, digits and . _ : / - "
                f"starting with a letter or digit (pattern {JOB_NAME_PATTERN.pattern})"
            )
        if name in self._jobs:
            raise JobConfigError(f"job name {name!r} is already defined in this registry")
        if not callable(handle):
            raise JobConfigError(f"job {name!r}: handle= must be callable, got {handle!r}")
        if retry is None:
            retry = Retry()
        elif not isinstance(retry, Retry):
            raise JobConfigError(f"job {name!r}: retry= must be a Retry, got {retry!r}")
        if on_failure is not None and not callable(on_failure):
            raise JobConfigError(f"job {name!r}: on_failure= must be callable, got {on_failure!r}")
        _check_arity(name, handle)
        model = (
            _check_model(name, payload)
            if payload is not None
            else _payload_model_from_handler(name, handle)
        )
        job: Job[P, C] = Job(name, typing.cast(type[P], model), handle, retry, on_failure)
        self._jobs[name] = job
        return job

    def schedule(
        self,
        name: str,
        *,
        cron: str,
        job: Job[P, C],
        payload: P | Mapping[str, Any] | None = None,
        timezone: str = "UTC",
    ) -> Schedule[P]:
        """Dispatch `job` with `payload` at each tick of `cron` in `timezone` (C29).

        The name, the expression, the timezone and the payload are all checked here: a mistake
        is a `JobConfigError` now, not a silent schedule later. See `jobs_core.schedule`.
        """
        from .schedule import define_schedule

        if isinstance(name, str) and name in self._schedules:
            raise JobConfigError(f"schedule name {name!r} is already defined in this registry")
        schedule = define_schedule(
            self, name, cron=cron, job=job, payload=payload, timezone=timezone
        )
        self._schedules[name] = schedule
        return schedule

    @property
    def schedules(self) -> list[Schedule[Any]]:
        """The schedules of this registry, in the order they were defined."""
        return list(self._schedules.values())

    def get(self, name: str) -> Job[Any, C] | None:
        """The job called `name`, or None: workers use this to spot unknown names (C17)."""
        return self._jobs.get(name)

    def __getitem__(self, name: str) -> Job[Any, C]:
        try:
            return self._jobs[name]
        except KeyError:
            known = ", ".join(sorted(self._jobs)) or "none"
            raise JobConfigError(
                f"no job named {name!r} in this registry (known: {known})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def __iter__(self) -> Iterator[Job[Any, C]]:
        return iter(list(self._jobs.values()))

    def __len__(self) -> int:
        return len(self._jobs)

    def names(self) -> list[str]:
        return sorted(self._jobs)

    def __repr__(self) -> str:
        return f"JobRegistry({self.names()!r})"
