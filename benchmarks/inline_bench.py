"""Inline: `dispatch_sync` (validate, serialise, run the job through the core's worker path,
events) against what an app could do instead: validate the payload and call the handler.

Inline has no round trip to save and nothing between the dispatch and the run, so its rows
show the whole of the core's per-job cost on both sides (dispatch and worker); they have no
targets of their own except the keyed one.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobs_core.backends.inline import InlineDispatcher

from . import dispatch_suite
from .config import Config
from .counter import SharedCounter
from .dispatch_suite import Baseline, DispatchKit, Payload
from .jobs import Note, noop
from .results import Row
from .scenario import Env

BACKEND = "inline"
SCALE = 2.5
"""Inline dispatches are ~10x faster than a Redis round trip: more of them per round."""


def rows(config: Config) -> list[str]:
    return dispatch_suite.row_ids(BACKEND, ["loop"])


def run(env: Env) -> list[Row]:
    hits = SharedCounter()
    dispatcher = InlineDispatcher(context=hits)
    handler, validate = noop.handler, Note.model_validate
    seen: set[str] = set()

    def direct(payload: Payload) -> None:
        handler(validate(payload), hits)

    def keyed(payload: Payload, key: str) -> None:
        if key not in seen:
            seen.add(key)
            handler(validate(payload), hits)

    def loop(payloads: Sequence[Payload]) -> None:
        for payload in payloads:
            handler(validate(payload), hits)

    kit = DispatchKit(
        BACKEND,
        dispatcher,
        public=Baseline("validate+call", "Note.model_validate(payload) + a handler call", direct),
        keyed=Baseline(
            "set+validate+call", "a check-and-add of the key in a set, then validate + call", keyed
        ),
        batches=[Baseline("loop", "validate + call for each payload", loop)],
        scale=SCALE,
        keyed_target=0.90,
    )
    try:
        return dispatch_suite.all_rows(env, kit)
    finally:
        dispatcher.close()
        hits.close()
