"""What the Inngest adapter's native steps read from the SDK (backends/inngest/steps.py):
the executor's request (its attempt, the memoised steps, the order steps completed in) is
where inngest-py 0.5 keeps it, and a step key hashes as the SDK hashes it. If an SDK upgrade
moves either, these fail first, naming the cause; the conformance suite (C34-C39 on the
stand-in and on the real Dev Server) checks the behaviour."""

from __future__ import annotations

from typing import Any

import inngest
from inngest._internal import transforms
from inngest.experimental import mocked

from jobs_core import JobRegistry, StepsSync
from jobs_core.backends.inngest import create_inngest_job_function
from jobs_core.backends.inngest.steps import InngestRunSteps, hashed, sdk_request
from tests.inngest.app import Greeting


def test_a_step_key_hashes_as_the_sdk_hashes_it() -> None:
    for key in ("charge", "charge:1", "ünïcode step"):
        assert hashed(key) == transforms.hash_step_id(key)


def test_the_request_is_where_the_adapter_reads_it() -> None:
    registry: JobRegistry[Any] = JobRegistry()
    seen: list[tuple[int, int, bool]] = []

    @registry.job("native.request")
    def job(payload: Greeting, ctx: Any, step: StepsSync) -> None:
        step.run("one", lambda: 1)
        step.run("two", lambda: 2)

    client = mocked.Inngest(app_id="native")
    fn = create_inngest_job_function(client, job, context=None)
    original = InngestRunSteps.__init__

    def spy(self: InngestRunSteps, ctx: Any, client: Any = None) -> None:
        original(self, ctx, client)
        request = sdk_request(ctx)
        seen.append((request.ctx.attempt, len(request.steps or {}), self.first_delivery))

    InngestRunSteps.__init__ = spy  # type: ignore[method-assign]
    try:
        result = mocked.trigger(
            fn, inngest.Event(name="native.request", data={"name": "x"}), client
        )
    finally:
        InngestRunSteps.__init__ = original  # type: ignore[method-assign]
    assert result.status is mocked.Status.COMPLETED
    assert seen[0] == (0, 0, True) and seen[-1] == (0, 2, False), seen
    assert all(first == (memoised == 0) for _, memoised, first in seen), seen
