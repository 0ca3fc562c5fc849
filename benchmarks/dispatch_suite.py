"""The dispatch rows of every backend, from one description of the backend (a `DispatchKit`).

For each backend: single dispatches at each payload size against the library's public call
and against the adapter's own transport; keyed against unkeyed dispatches and against the keyed
dispatch a user would write; `dispatch_many_sync` against single dispatches and against each
batch primitive of the library. Each comparison is one interleaved run of its sides.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from jobs_core.dispatch.dispatcher import BaseDispatcher

from .config import SIZES, SMALL
from .jobs import PAYLOAD_BYTES, PAYLOADS, noop
from .results import Row, compare
from .scenario import Env
from .timing import Side, interleave, median, timed

Payload = dict[str, Any]
F = TypeVar("F")

_keys = itertools.count()


@dataclass
class Baseline(Generic[F]):
    """What a user could do without jobs_core: `call`, named `label` in the table (and, for a
    batch baseline, in its row id: `<backend>.batch.<label>`)."""

    label: str
    describe: str
    call: F
    target: float | None = None


@dataclass
class DispatchKit:
    """One backend, as the dispatch rows need it."""

    backend: str
    dispatcher: BaseDispatcher
    public: Baseline[Callable[[Payload], object]]
    """The library's public call for one job (targets by size in `dispatch_targets`)."""
    keyed: Baseline[Callable[[Payload, str], object]]
    """A keyed dispatch as a user would write it (the key claimed, then the public call)."""
    batches: Sequence[Baseline[Callable[[Sequence[Payload]], object]]]
    """The library's ways to send many jobs at once."""
    clear: Callable[[], object] = lambda: None
    """Drops what a side enqueued (untimed, after each run of a side)."""
    scale: float = 1.0
    dispatch_targets: Mapping[str, float] = field(default_factory=dict)
    keyed_target: float | None = None
    single_target: float | None = None
    """`dispatch_many_sync` against as many `dispatch_sync` calls."""


def ours(kit: DispatchKit, payload: Payload, *, keyed: bool = False) -> Side:
    """`dispatch_sync` of `payload`, with a new idempotency key each time when `keyed`."""
    dispatch = kit.dispatcher.dispatch_sync

    def side(n: int) -> float:
        if not keyed:
            return timed(n, lambda _: dispatch(noop, payload), after=kit.clear)
        keys = [f"k{next(_keys)}" for _ in range(n)]
        return timed(n, lambda i: dispatch(noop, payload, idempotency_key=keys[i]), kit.clear)

    return side


def transport(kit: DispatchKit, payload: Payload) -> Side:
    """The adapter's `_send` alone, with jobs the core prepared beforehand (untimed)."""
    send = kit.dispatcher._send
    template = kit.dispatcher.prepare(noop, payload)

    def side(n: int) -> float:
        prepared = [replace(template, dispatch_id=str(uuid.uuid4())) for _ in range(n)]
        return timed(n, lambda i: send([prepared[i]]), after=kit.clear)

    return side


def single(kit: DispatchKit, call: Callable[[Payload], object], payload: Payload) -> Side:
    return lambda n: timed(n, lambda _: call(payload), after=kit.clear)


def keyed_user(kit: DispatchKit, payload: Payload) -> Side:
    call = kit.keyed.call

    def side(n: int) -> float:
        keys = [f"k{next(_keys)}" for _ in range(n)]
        return timed(n, lambda i: call(payload, keys[i]), after=kit.clear)

    return side


def many(kit: DispatchKit, call: Callable[[Sequence[Payload]], object], payload: Payload) -> Side:
    """One call for n jobs (timed as one operation, reported per job)."""
    return lambda n: timed(1, lambda _: call([payload] * n), after=kit.clear)


def dispatch_rows(env: Env, kit: DispatchKit) -> list[Row]:
    config, b = env.config, kit.backend
    rows: list[Row] = []
    for size in SIZES:
        payload, n = PAYLOADS[size], config.n(size, kit.scale)
        env.log(f"{b}: dispatch, {size} payload, {n:,} x {config.rounds}")
        timings = interleave(
            {
                "ours": ours(kit, payload),
                "public": single(kit, kit.public.call, payload),
                "transport": transport(kit, payload),
            },
            n,
            config.rounds,
            warmup_n=min(config.warmup_n, n),
            slices=min(config.slices, n),
            progress=env.log,
        )
        what = f"dispatch_sync of a {PAYLOAD_BYTES[size]:,} B payload"
        rows.append(
            compare(
                f"{b}.dispatch.{size}",
                f"{what} vs {kit.public.describe}",
                timings,
                "ours",
                "public",
                target=kit.dispatch_targets.get(size),
                labels=("", kit.public.label),
            )
        )
        row = compare(
            f"{b}.dispatch.{size}.transport",
            f"{what} vs the adapter's own `_send` of a job the core prepared beforehand "
            "(the transport alone: what the core adds is the difference)",
            timings,
            "ours",
            "transport",
            labels=("", "_send"),
        )
        deltas = [(o - t) / n * 1e6 for o, t in zip(timings.cpu["ours"], timings.cpu["transport"])]
        row.figures["core_cpu_us"] = median(deltas)
        row.samples["core_cpu_us"] = deltas
        row.cpu += f" ({median(deltas):+,.0f})"
        rows.append(row)
    return rows


def keyed_rows(env: Env, kit: DispatchKit) -> list[Row]:
    config, b = env.config, kit.backend
    payload, n = PAYLOADS[SMALL], config.n(SMALL, kit.scale)
    env.log(f"{b}: keyed dispatch, {n:,} x {config.rounds}")
    timings = interleave(
        {
            "keyed": ours(kit, payload, keyed=True),
            "unkeyed": ours(kit, payload),
            "user": keyed_user(kit, payload),
        },
        n,
        config.rounds,
        warmup_n=min(config.warmup_n, n),
        slices=min(config.slices, n),
        progress=env.log,
    )
    return [
        compare(
            f"{b}.keyed",
            "dispatch_sync with a new idempotency key each vs dispatch_sync without a key",
            timings,
            "keyed",
            "unkeyed",
            target=kit.keyed_target,
            labels=("", "unkeyed"),
        ),
        compare(
            f"{b}.keyed.user",
            f"keyed dispatch_sync vs {kit.keyed.describe}",
            timings,
            "keyed",
            "user",
            target=kit.keyed.target,
            labels=("", kit.keyed.label),
        ),
    ]


def batch_rows(env: Env, kit: DispatchKit) -> list[Row]:
    """`dispatch_many_sync` against single dispatches (one call a round, the single side is
    slow), then against each library primitive, alternated `slices` times a round, since one
    call of each is short and a single call per round would be at the mercy of the load."""
    config, b = env.config, kit.backend
    payload, n, reps = PAYLOADS[SMALL], config.batch_n, config.slices
    dispatch_many = kit.dispatcher.dispatch_many_sync
    ours_many = many(kit, lambda ps: dispatch_many([(noop, p) for p in ps]), payload)
    warmup = min(config.warmup_n, n)
    env.log(f"{b}: batch of {n:,} vs single dispatches, x {config.rounds}")
    timings = interleave(
        {"many": ours_many, "single": ours(kit, payload)},
        n,
        config.rounds,
        warmup_n=warmup,
        progress=env.log,
    )
    rows = [
        compare(
            f"{b}.batch",
            f"one dispatch_many_sync of {n:,} jobs vs {n:,} dispatch_sync calls",
            timings,
            "many",
            "single",
            target=kit.single_target,
            labels=("many", "single"),
        )
    ]
    if not kit.batches:
        return rows
    env.log(f"{b}: batch of {n:,} vs the library's batches, {reps} calls each x {config.rounds}")
    sides = {"many": ours_many} | {x.label: many(kit, x.call, payload) for x in kit.batches}
    timings = interleave(
        sides, n * reps, config.rounds, warmup_n=warmup, slices=reps, progress=env.log
    )
    for baseline in kit.batches:
        rows.append(
            compare(
                f"{b}.batch.{baseline.label}",
                f"one dispatch_many_sync of {n:,} jobs vs {baseline.describe} "
                f"({reps} calls of each a round, alternated)",
                timings,
                "many",
                baseline.label,
                target=baseline.target,
                labels=("many", baseline.label),
            )
        )
    return rows


def all_rows(env: Env, kit: DispatchKit) -> list[Row]:
    """Every dispatch row of `kit`'s backend."""
    return dispatch_rows(env, kit) + keyed_rows(env, kit) + batch_rows(env, kit)


def row_ids(backend: str, batch_labels: Sequence[str]) -> list[str]:
    """The ids `all_rows` produces for `backend` with batch baselines labelled so."""
    ids = [f"{backend}.dispatch.{s}{t}" for s in SIZES for t in ("", ".transport")]
    ids += [f"{backend}.keyed", f"{backend}.keyed.user", f"{backend}.batch"]
    return ids + [f"{backend}.batch.{label}" for label in batch_labels]
