"""`JobRegistry`: the jobs (and schedules) of one app, bound to its context type."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, overload

from pydantic import BaseModel
from typing_extensions import Unpack

from ..calling import callable_name
from ..errors import JobConfigError
from ..events.event import JOB_FAILED, Event, M, check_event_name
from ..schedules.schedule import Schedule, define_schedule
from .job import C, Handler, Job, JobOptions, P, make_job
from .payload import check_travels


class JobRegistry(Generic[C]):
    """The jobs of one app, bound to its context type `C`; workers are built from a registry."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job[Any, C]] = {}
        self._schedules: dict[str, Schedule[Any]] = {}
        self._events: dict[str, Event[Any]] = {}
        self._built_into: str | None = None

    def built_into(self, worker: str) -> None:
        """Record that `worker` (say "the Celery app of create_celery_app") was built from this
        registry: it made one task per job, so a job defined afterwards would not be in it, and
        its messages would be dead-lettered. Defining one is then a `JobConfigError`. Worker
        factories call this once they have made their tasks."""
        if self._built_into is None:
            self._built_into = worker

    def event(self, name: str, model: type[M]) -> Event[M]:
        """Define an event: its name (as a job's, C1) and the pydantic model of its data (C40).
        Jobs defined with `on=` it run once for each one `send` sends."""
        check_event_name(name)
        if name in self._events or name == JOB_FAILED.name:
            raise JobConfigError(f"event name {name!r} is already defined in this registry")
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise JobConfigError(f"event {name!r}: its model must be a pydantic BaseModel class")
        check_travels(name, model)
        event: Event[M] = Event(name, model, self)
        self._events[name] = event
        return event

    @property
    def events(self) -> list[Event[Any]]:
        """The events of this registry, in the order they were defined."""
        return list(self._events.values())

    def jobs_on(self, event: Event[Any]) -> tuple[Job[Any, C], ...]:
        """The jobs of this registry that `event` triggers, in the order they were defined."""
        return tuple(job for job in self._jobs.values() if job.on is event)

    @overload
    def job(
        self, name: str, **options: Unpack[JobOptions[C]]
    ) -> Callable[[Handler[P, C]], Job[P, C]]: ...

    @overload
    def job(
        self, name: str, *, payload: type[P], **options: Unpack[JobOptions[C]]
    ) -> Callable[[Handler[P, C]], Job[P, C]]: ...

    def job(
        self, name: str, *, payload: type[P] | None = None, **options: Unpack[JobOptions[C]]
    ) -> Callable[[Handler[P, C]], Job[P, C]]:
        """Decorator: define a job from `handler(payload, ctx)` (or `handler(payload)`, which
        needs no context); returns the `Job`.

        The payload model is the handler's first parameter's annotation unless `payload=` names
        it. Options (`JobOptions`): `retry=Retry(...)`, `on_failure=hook(error, payload, ctx)`,
        and flow control (C25–C27): `concurrency=Concurrency(limit, key=None)`,
        `throttle=Throttle(limit, period, key=None)`, and `idempotency=` a payload field's name
        or a callable of the payload giving each dispatch's idempotency key.
        """
        if callable(name) and not isinstance(name, str):
            raise JobConfigError(
                f'@jobs.job needs the job\'s name: write @jobs.job("some.name") above '
                f"{callable_name(name)}, not a bare @jobs.job (the name is what every backend "
                "routes by, so it is never guessed from the function)"
            )

        _check_options(name, options)

        def decorate(handler: Handler[P, C]) -> Job[P, C]:
            return self.define_job(name, handle=handler, payload=payload, **options)

        return decorate

    def define_job(
        self,
        name: str,
        *,
        handle: Handler[P, C],
        payload: type[P] | None = None,
        **options: Unpack[JobOptions[C]],
    ) -> Job[P, C]:
        """Define and register a job without a decorator; every check runs here, not at a worker."""
        if isinstance(name, str) and name in self._jobs:
            raise JobConfigError(f"job name {name!r} is already defined in this registry")
        if self._built_into is not None:
            raise JobConfigError(
                f"job {name!r} is defined after {self._built_into} was built from this "
                "registry, so that worker has no task for it and would dead-letter its "
                "messages: define every job before building the worker (import the modules "
                "that define jobs before the line that builds it)"
            )
        _check_options(name, options)
        on = options.get("on")
        if isinstance(on, Event) and on is not JOB_FAILED and self._events.get(on.name) is not on:
            raise JobConfigError(
                f"job {name!r}: event {on.name!r} is not defined in this registry (define it "
                "with jobs.event(name, Model) on the registry the job is defined in)"
            )
        job = make_job(name, handle=handle, payload=payload, **options)
        job.registry = self
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


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    unknown = options.keys() - JobOptions.__annotations__.keys()
    if unknown:
        raise JobConfigError(
            f"job {name!r}: unknown option {', '.join(sorted(unknown))}; a job takes "
            f"{', '.join(JobOptions.__annotations__)} (and payload=)"
        )
