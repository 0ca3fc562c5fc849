"""The inline backend's harness: jobs run inside `dispatch`, so waits return at once.

Its dispatcher is made the portable way, `create_dispatcher(..., raise_on_failure=False)`: a job
that gives up does not raise from `dispatch`, as on every other backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from jobs_core import JobRegistry, JobsSettings, create_dispatcher
from jobs_core.instrumentation import Instrumentation
from jobs_core.worker import Delivery, JobWorker


class InlineSession:
    def __init__(self, registry: JobRegistry[Any], context: Any, inst: Instrumentation) -> None:
        self.registry = registry
        self.context = context
        self.instrumentation = inst
        self.dispatcher = create_dispatcher(
            context,
            settings=JobsSettings(backend="inline"),
            instrumentation=inst,
            raise_on_failure=False,
        )
        self._dead: list[str] = []

    def send_raw(self, job_name: str, data: Any) -> None:
        # Inline has no queue; a raw message is what a worker would do with it: the core path.
        worker: JobWorker[Any] = JobWorker(
            self.registry,
            context=self.context,
            backend="inline",
            instrumentation=self.instrumentation,
        )
        job = self.registry.get(job_name)
        if job is None:
            worker.report_unknown(Delivery(job_name, data), where="(the inline harness's list)")
            self._dead.append(job_name)
            return
        worker.run_in_process(job, data, "raw", _Ignore(), wait=False)

    def dead_letters(self) -> list[str]:
        return list(self._dead)

    def drain(self, timeout: float = 0.0) -> None:
        """Nothing to wait for: inline runs each job, retries included, inside `dispatch`."""

    def enqueued_count(self) -> int:
        return sum(
            1
            for e in self.instrumentation.events  # type: ignore[attr-defined]
            if e.kind == "scheduled"
        )


class _Ignore:
    """Raw messages settle silently: the tests read what happened from the events."""

    def retry(self, delivery: Delivery, delay: timedelta) -> None: ...

    def give_up(self, delivery: Delivery, error: BaseException) -> None: ...


class InlineHarness:
    name = "inline"
    durable = False
    has_worker_queue = False
    reports_unknown_jobs = True

    @contextmanager
    def session(
        self, registry: JobRegistry[Any], *, context: Any, instrumentation: Instrumentation
    ) -> Iterator[InlineSession]:
        yield InlineSession(registry, context, instrumentation)

    def settings(self) -> JobsSettings:
        return JobsSettings(backend="inline")

    def environment(self) -> dict[str, str]:
        return {}

    def unreachable_dispatcher(
        self, registry: JobRegistry[Any], *, timeout: float, hanging: bool
    ) -> None:
        return None


def make_harness(resources: Any) -> InlineHarness:
    return InlineHarness()
