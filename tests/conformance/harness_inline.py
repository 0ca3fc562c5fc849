"""The inline backend's harness: jobs run inside `dispatch`, so waits return at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jobs_core import JobRegistry, JobsSettings
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.execution import report_unknown_job, run_job_sync
from jobs_core.instrumentation import Instrumentation


class InlineSession:
    def __init__(self, registry: JobRegistry[Any], context: Any, inst: Instrumentation) -> None:
        self.registry = registry
        self.context = context
        self.instrumentation = inst
        self.errors: list[BaseException] = []
        self.dispatcher = InlineDispatcher(
            context=context,
            instrumentation=inst,
            on_error=lambda error, job: self.errors.append(error),
        )
        self._dead: list[str] = []

    def send_raw(self, job_name: str, data: Any) -> None:
        # Inline has no queue; a raw message is what a worker would do with it: the core path.
        job = self.registry.get(job_name)
        if job is None:
            report_unknown_job(
                job_name, dispatch_id=None, backend="inline", instrumentation=self.instrumentation
            )
            self._dead.append(job_name)
            return
        attempt = 0
        while run_job_sync(
            job,
            data,
            context=self.context,
            attempt=attempt,
            dispatch_id=None,
            backend="inline",
            instrumentation=self.instrumentation,
        ).should_retry:
            attempt += 1

    def dead_letters(self) -> list[str]:
        return list(self._dead)

    def enqueued_count(self) -> int:
        return sum(
            1
            for e in self.instrumentation.events  # type: ignore[attr-defined]
            if e.kind == "scheduled"
        )


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
