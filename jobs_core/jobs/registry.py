"""`JobRegistry`: the jobs (and schedules) of one app, bound to its context type."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, overload

from typing_extensions import Unpack

from ..calling import callable_name
from ..errors import JobConfigError
from ..schedules.schedule import Schedule, define_schedule
from .job import C, Handler, Job, JobOptions, P, make_job


class JobRegistry(Generic[C]):
    """The jobs of one app, bound to its context type `C`; workers are built from a registry."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job[Any, C]] = {}
        self._schedules: dict[str, Schedule[Any]] = {}

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
        _check_options(name, options)
        job = make_job(name, handle=handle, payload=payload, **options)
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
