"""Delivering waiting runs again: what a `send`, a child's end, or a sweep of deadlines does
with the waiters it claimed (`jobs_core.steps.waits`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pydantic_core

from ..dispatch.prepared import PreparedJob
from ..jobs.job import Job
from .waits import EventWaits, Waiter

logger = logging.getLogger("jobs_core.steps")

SWEEP_EVERY = 0.5
"""Seconds between two looks for waits past their deadline."""


def resume(
    dispatcher: Any,
    waits: EventWaits,
    waiters: Sequence[Waiter],
    job_named: Callable[[str], Job[Any, Any] | None],
) -> None:
    """Deliver the runs of claimed `waiters` again, through `dispatcher`'s enqueue; a run that
    cannot be enqueued is released (it waits on, and a later send or sweep takes it)."""
    continuations: list[PreparedJob] = []
    for waiter in waiters:
        job = job_named(waiter.job_name)
        if job is None:
            logger.error(
                "run %s of job %r waits at step %r, and this process does not know the job: "
                "it waits on",
                waiter.run_id,
                waiter.job_name,
                waiter.key,
            )
            waits.release(waiter)
            continue
        body = pydantic_core.to_json(waiter.data)
        model = job.payload_model.model_validate(waiter.data)
        continuations.append(PreparedJob(job, model, body, waiter.run_id))
    if not continuations:
        return
    try:
        dispatcher._send(continuations)
    except Exception:
        logger.exception("could not deliver %d waiting run(s) again", len(continuations))
        for waiter in waiters:
            waits.release(waiter)


class Sweeper:
    """A thread that ends the waits whose deadline passed (each run resumed with None)."""

    def __init__(
        self,
        waits: EventWaits,
        deliver: Callable[[list[Waiter]], None],
        every: float = SWEEP_EVERY,
    ) -> None:
        self.waits = waits
        self.deliver = deliver
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobs-core-waits", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                due = self.waits.take_due(time.time())
                if due:
                    self.deliver(due)
            except Exception:
                logger.exception("could not end the waits past their deadline")

    def stop(self) -> None:
        self._stop.set()
