"""Inline: `dispatch_sync` (validate, serialise, run the job through `run_job_sync`, events)
against the direct call an app could make instead (`Model.model_validate` + the handler)."""

from __future__ import annotations

from jobs_core.backends.inline import InlineDispatcher

from . import memory
from .common import Env, Result, compare, floor_result, interleave, lpush_side, timed
from .jobs import SAMPLE, SAMPLE_JSON, LocalHits, Note, noop

BACKEND = "inline"


def run(env: Env) -> list[Result]:
    config = env.config
    hits = LocalHits()
    dispatcher = InlineDispatcher(context=hits)
    client = env.redis_client()
    handler = noop.handler
    validate = Note.model_validate
    expected = 0

    def ours(n: int) -> float:
        nonlocal expected
        expected += n
        dispatch = dispatcher.dispatch_sync
        return timed(n, lambda _: dispatch(noop, SAMPLE))

    def raw(n: int) -> float:
        nonlocal expected
        expected += n
        return timed(n, lambda _: handler(validate(SAMPLE), hits))

    def many(n: int) -> float:
        nonlocal expected
        expected += n
        items = [(noop, SAMPLE)] * n
        return timed(1, lambda _: dispatcher.dispatch_many_sync(items))

    results: list[Result] = []
    try:
        env.log("inline: dispatch overhead (+ LPUSH floor)")
        n = config.inline_dispatch_n
        seconds = interleave(
            {
                "ours": ours,
                "raw": raw,
                "lpush": lpush_side(client, "bench:inline:floor", SAMPLE_JSON),
            },
            n,
            config.rounds,
            warmup_n=config.warmup_n,
            slices=config.dispatch_slices,
            progress=env.log,
        )
        results.append(
            compare(
                "dispatch",
                BACKEND,
                n,
                seconds,
                "ours",
                "raw",
                target=None,
                note="dispatch_sync (runs the job) vs Note.model_validate + handler call",
            )
        )
        results.append(floor_result(BACKEND, n, seconds))

        env.log("inline: batch")
        n = config.batch_n
        seconds = interleave(
            {"many": many, "single": ours},
            n,
            config.rounds,
            warmup_n=config.warmup_n,
            progress=env.log,
        )
        results.append(
            compare(
                "batch",
                BACKEND,
                n,
                seconds,
                "many",
                "single",
                target=None,
                note="one dispatch_many_sync of n vs n dispatch_sync (no round trip to save)",
            )
        )

        env.log("inline: end to end")
        n = config.e2e_n
        seconds = interleave(
            {"ours": ours, "raw": raw},
            n,
            config.rounds,
            warmup_n=config.warmup_n,
            progress=env.log,
        )
        results.append(
            compare(
                "e2e",
                BACKEND,
                n,
                seconds,
                "ours",
                "raw",
                target=None,
                note="in process: dispatch_sync vs validate + handler call",
            )
        )
        if hits.count != expected:
            raise RuntimeError(f"inline: {hits.count} jobs ran, {expected} expected")

        env.log("inline: memory (fresh process)")
        results.append(memory.run(env))
    finally:
        client.close()
    return results
