"""A budget for cleverness (issue 27): each speed-only construct, removed or still in the code,
timed against the plain way and set beside an end-to-end dispatch to a real broker.

    python -m benchmarks --only constructs          # the rows, in a run of their own
    python -m benchmarks.constructs --pairs         # the in-process pairs alone, printed

The rule: a construct earns its place only if what it saves moves the end-to-end figure by more
than that figure's spread. The end-to-end figure is `dispatch_sync` of the same payload to this
run's `redis-server`, on Dramatiq and on Celery: wall µs per dispatch, per round; its spread is
the largest minus the smallest round (`constructs.e2e.<backend>[.<size>]` rows).

Each construct is measured side by side with the plain way, in one process:

- the core's constructs (and the worker's), as pairs of operations timed in a fresh process in
  CPU µs per operation (this process's CPU: the load of other processes does not count), the
  two sides alternating over the repeats; the construct's code is the removed code itself,
  rebuilt in `benchmarks/removed.py`, or, for a construct still in the code, the current code
  with the construct switched off. A construct of the core is set against the backend whose
  end-to-end figure has the smaller spread (the more favourable to it);
- the adapters' constructs (Dramatiq's pre-encoded message, Celery's pre-encoded body, hiredis),
  as dispatchers to Redis interleaved in the end-to-end run itself: the current adapter and the
  same adapter with the construct put back or taken out, in CPU µs per dispatch of this process
  (the broker's CPU is another process's), the wall µs kept beside it.

Each row's figure is the saving, plain minus clever, in µs per dispatch (per job for the
worker's constructs), median [min–max] over the repeats or rounds; its note gives the verdict.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import kombu.transport.redis
import redis
from redis.connection import HIREDIS_AVAILABLE, PythonRespSerializer, _RESP2Parser

from jobs_core.backends.celery import CeleryDispatcher
from jobs_core.backends.celery.dispatcher import MESSAGE_OPTIONS
from jobs_core.backends.dramatiq import DramatiqDispatcher
from jobs_core.dispatch.dispatcher import BaseDispatcher
from jobs_core.dispatch.idempotency import Claim, MemoryIdempotencyStore, scoped_key
from jobs_core.dispatch.port import DispatchReceipt
from jobs_core.dispatch.prepared import PreparedJob
from jobs_core.jobs.payload import encode_payload, validate_payload
from jobs_core.worker import Delivery
from jobs_core.worker.worker import Outcome, RunEvents

from . import removed
from .config import SIZES, SMALL, Config
from .jobs import JOB_NAME, PAYLOAD_BYTES, PAYLOADS, noop
from .micro import Meter, NoSend
from .processes import PYTHON, WorkerProcess
from .results import MICROS, Row, spread
from .scenario import Env
from .timing import Timings, interleave, median, timed, wait_until

Op = Callable[[], object]
BACKENDS = ("dramatiq", "celery")


@dataclass(frozen=True)
class Construct:
    """One speed-only construct: what it is, where it stands, how its two sides are named."""

    name: str
    kept: bool
    """Still in the code (True) or removed by issue 27."""
    per: str
    """What the saving is per: `dispatch`, `keyed dispatch` or `job`."""
    what: str
    clever: str
    plain: str
    sizes: tuple[str, ...] = (SMALL,)
    backends: tuple[str, ...] = BACKENDS
    """The backends whose end-to-end figure it is set against (an adapter's: its own)."""
    adapter: bool = False
    """Measured as interleaved dispatchers in the end-to-end run (else as an in-process pair)."""

    def row_id(self, size: str, backend: str | None = None) -> str:
        parts = ["constructs", self.name]
        if self.adapter and len(self.backends) > 1 and backend is not None:
            parts.append(backend)
        if size != SMALL:
            parts.append(size)
        return ".".join(parts)


CONSTRUCTS: tuple[Construct, ...] = (
    Construct(
        "dispatch_id",
        False,
        "dispatch",
        "dispatch id from a counter after a per-process random prefix (`jobs_core/ids.py`)",
        "new_dispatch_id()",
        "secrets.token_hex(16)",
    ),
    Construct(
        "receipt_slots",
        False,
        "dispatch",
        "receipt made by setting its slots (`new_receipt`)",
        "new_receipt(...)",
        "DispatchReceipt(...)",
    ),
    Construct(
        "mutable_prepared_job",
        False,
        "dispatch",
        "`PreparedJob` left unfrozen",
        "slots dataclass",
        "frozen dataclass",
    ),
    Construct(
        "mapping_to_json",
        False,
        "dispatch",
        "a mapping validated straight into JSON, no model built (`jobs_core/exact.py`)",
        "encode_mapping",
        "validate_payload + encode_payload",
        sizes=tuple(SIZES),
    ),
    Construct(
        "carried_exactly",
        True,
        "dispatch",
        "no round-trip proof for a model validated just now whose field types JSON carries "
        "exactly (`_carried_exactly`)",
        "encode_payload(fresh=True)",
        "encode_payload(fresh=False)",
        sizes=tuple(SIZES),
    ),
    Construct(
        "lockfree_store",
        False,
        "keyed dispatch",
        "in-process key store claiming without a lock (one `dict.setdefault`)",
        "lock-free claim",
        "OrderedDict under a lock",
    ),
    Construct(
        "unbuilt_events",
        True,
        "dispatch",
        "the `scheduled` event not built when nothing wants it (`interest` / `wants`)",
        "wants() asked first",
        "event built, dropped by the logging",
    ),
    Construct(
        "unbuilt_worker_events",
        True,
        "job",
        "the `started` and `completed` events not built when nothing wants them",
        "wants() asked first",
        "both built, dropped by the logging",
    ),
    Construct(
        "completed_cache",
        False,
        "job",
        "the outcome of a run that went well made once per attempt (`_COMPLETED`)",
        "_COMPLETED[attempt]",
        'Outcome("completed", attempt)',
    ),
    Construct(
        "mutable_delivery",
        False,
        "job",
        "`Delivery` left unfrozen",
        "slots dataclass",
        "frozen slots dataclass",
    ),
    Construct(
        "dramatiq_message",
        True,
        "dispatch",
        "Dramatiq message with the payload's JSON spliced in (`EncodedMessage`)",
        "EncodedMessage",
        "Message(args=(data,))",
        sizes=tuple(SIZES),
        backends=("dramatiq",),
        adapter=True,
    ),
    Construct(
        "celery_body",
        True,
        "dispatch",
        "Celery task body with the payload's JSON spliced in (`_task_message`)",
        "pre-encoded body",
        "kombu serialises the body",
        sizes=tuple(SIZES),
        backends=("celery",),
        adapter=True,
    ),
    Construct(
        "hiredis",
        True,
        "dispatch",
        "redis-py with hiredis, its C parser and packer (the celery and dramatiq extras)",
        "hiredis",
        "pure-Python redis-py",
        sizes=tuple(SIZES),
        adapter=True,
    ),
)
BY_NAME = {c.name: c for c in CONSTRUCTS}


def _available(construct: Construct) -> bool:
    return construct.name != "hiredis" or HIREDIS_AVAILABLE


def rows(config: Config) -> list[str]:
    ids = [f"constructs.e2e.{b}" + ("" if s == SMALL else f".{s}") for b in BACKENDS for s in SIZES]
    for construct in filter(_available, CONSTRUCTS):
        backends = construct.backends if construct.adapter else (None,)
        ids += [construct.row_id(s, b) for b in backends for s in construct.sizes]
    return ids


# -- the in-process pairs (run in a fresh process) -----------------------------------------------


def _store_ops() -> tuple[Op, Op]:
    """A claim of a new key on each store, full at its default 10,000 keys (the steady state of
    a producer with many keys: each claim forgets the oldest). The claims are made beforehand
    (a pool larger than the cap, cycled: a key comes round again long after it was forgotten)."""
    keys = [scoped_key(JOB_NAME, f"k{i}") for i in range(40_000)]
    old_claims = [[(key, "id")] for key in keys]
    new_claims = [[Claim(key, "id", "t")] for key in keys]
    old, new = removed.LockFreeMemoryStore(), MemoryIdempotencyStore()
    for batch in old_claims[:20_000]:
        old.claim(batch)
    for claims in new_claims[:20_000]:
        new.claim(claims)
    old_next = _cycle(old_claims, 20_000)
    new_next = _cycle(new_claims, 20_000)
    return lambda: old.claim(old_next()), lambda: new.claim(new_next())


def _cycle(items: list[Any], start: int) -> Callable[[], Any]:
    position = [start]
    size = len(items)

    def following() -> Any:
        i = position[0]
        position[0] = i + 1 if i + 1 < size else 0
        return items[i]

    return following


def _every_kind(kind: str) -> bool:
    return True


def pair_ops(name: str, size: str) -> tuple[Op, Op]:
    """(clever, plain) for construct `name` at payload `size`."""
    payload = PAYLOADS[size]
    model = validate_payload(noop, payload)
    body = encode_payload(noop, model)
    if name == "dispatch_id":
        return removed.new_dispatch_id, lambda: secrets.token_hex(16)
    if name == "receipt_slots":
        return (
            lambda: removed.new_receipt(JOB_NAME, "id", "dramatiq"),
            lambda: DispatchReceipt(JOB_NAME, "id", "dramatiq"),
        )
    if name == "mutable_prepared_job":
        return (
            lambda: removed.MutablePreparedJob(noop, model, body, "id", None, None),
            lambda: PreparedJob(noop, model, body, "id", None, None),
        )
    if name == "mapping_to_json":
        return (
            lambda: removed.encode_mapping(noop, payload),
            lambda: encode_payload(noop, validate_payload(noop, payload), fresh=True),
        )
    if name == "carried_exactly":
        return (
            lambda: encode_payload(noop, model, fresh=True),
            lambda: encode_payload(noop, model, fresh=False),
        )
    if name == "lockfree_store":
        return _store_ops()
    if name == "unbuilt_events":
        clever, plain = NoSend(), NoSend()
        plain._wants = _every_kind  # as before `wants`: every event built, then recorded
        return lambda: clever._receipt(JOB_NAME, "id"), lambda: plain._receipt(JOB_NAME, "id")
    if name == "unbuilt_worker_events":
        delivery = Delivery(JOB_NAME, payload, 0, "id")
        clever_events, plain_events = RunEvents(None, "micro"), RunEvents(None, "micro")
        plain_events.wants = _every_kind
        started = time.perf_counter()

        def both(events: RunEvents) -> Op:
            def record() -> None:
                events.record("started", delivery)
                events.record("completed", delivery, started)

            return record

        return both(clever_events), both(plain_events)
    if name == "completed_cache":
        return lambda: removed.completed(0), lambda: Outcome("completed", 0)
    if name == "mutable_delivery":
        return (
            lambda: removed.MutableDelivery(JOB_NAME, payload, 0, "id"),
            lambda: Delivery(JOB_NAME, payload, 0, "id"),
        )
    raise ValueError(f"no in-process pair for {name!r}")


def measure_pairs(budget: float, repeats: int) -> dict[str, Any]:
    """Every in-process pair: `{"pairs": {name: {size: {"clever_us": [...], ...}}}}`."""
    meter = Meter(budget, repeats)
    pairs: dict[str, dict[str, dict[str, list[float]]]] = {}
    for construct in CONSTRUCTS:
        if construct.adapter:
            continue
        for size in construct.sizes:
            clever, plain = pair_ops(construct.name, size)
            clever_us, plain_us = meter.pair(clever, plain)
            pairs.setdefault(construct.name, {})[size] = {
                "clever_us": clever_us,
                "plain_us": plain_us,
                "saving_us": [p - c for p, c in zip(plain_us, clever_us)],
                "iterations": [float(meter.iterations)],
            }
    return {"budget_s": budget, "repeats": repeats, "loop_us": meter.loop_us, "pairs": pairs}


def _run_pairs(env: Env) -> dict[str, Any]:
    config = env.config
    env.log("constructs: the in-process pairs (fresh process)")
    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
        out = Path(tmp, "pairs.json")
        args = [PYTHON, "-m", "benchmarks.constructs", "--pairs", "--json", str(out)]
        args += ["--budget", str(config.micro_budget), "--repeats", str(config.rounds + 2)]
        with WorkerProcess(args) as worker:
            process = worker.process
            assert process is not None
            wait_until(lambda: process.poll() is not None, 900, "the pairs", interval=0.05)
            if process.returncode != 0:
                raise RuntimeError(f"the constructs' pairs failed:\n{worker.output()}")
        document: dict[str, Any] = json.loads(out.read_text())
        return document


# -- the adapters' constructs: dispatchers interleaved in the end-to-end run --------------------


PYTHON_PARSERS = {"_RESP2Parser", "_RESP3Parser"}
"""redis-py's pure-Python parsers (it picks the RESP3 one itself for a RESP3 connection)."""


class PurePythonConnection(redis.Connection):
    """redis-py's connection with its pure-Python reply parser and command packer: what it
    uses where hiredis is not installed."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["parser_class"] = _RESP2Parser
        super().__init__(**kwargs)

    def _construct_command_packer(self, packer: Any) -> Any:
        return PythonRespSerializer(self._buffer_cutoff, self.encoder.encode)


class PurePythonChannel(kombu.transport.redis.Channel):  # type: ignore[misc]
    connection_class = PurePythonConnection


class PurePythonTransport(kombu.transport.redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport on `PurePythonConnection`s (`broker_transport` names it)."""

    Channel = PurePythonChannel


def _pure_python(pool: Any) -> None:
    """Make `pool` (a redis-py `ConnectionPool`) open pure-Python connections from now on."""
    pool.disconnect()
    pool.connection_class = PurePythonConnection
    pool.reset()


def _parsers(pools: Iterable[Any]) -> set[str]:
    """The parser class names of the connections `pools` hold."""
    found = set()
    for pool in pools:
        for connection in [*pool._available_connections, *pool._in_use_connections]:
            found.add(type(connection._parser).__name__)
    return found


class PlainMessageDramatiqDispatcher(DramatiqDispatcher):
    """Dramatiq's adapter without its pre-encoded message: `dramatiq.Message(args=(data,))`,
    the core's JSON parsed back for Dramatiq's encoder to write it again."""

    def _message(self, prepared: PreparedJob) -> dramatiq.Message[Any]:
        fields: dict[str, Any] = {"queue_name": self.queue, "actor_name": prepared.name}
        fields.update(kwargs={}, options={}, message_id=prepared.dispatch_id)
        return dramatiq.Message(args=(prepared.data,), **fields)


class PlainBodyCeleryDispatcher(CeleryDispatcher):
    """Celery's adapter without its pre-encoded body: the task message as `send_task` makes
    it, the payload (the core's JSON, parsed) its argument, serialised by kombu. Single jobs on
    Redis only (what the benchmark sends)."""

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        amqp, queue = self.app.amqp, self.app.amqp.queues[self.queue]
        with self.app.producer_or_acquire() as producer:
            for p in jobs:
                message = amqp.create_task_message(
                    p.dispatch_id, p.name, (p.data,), {}, eta=p.eta, **MESSAGE_OPTIONS
                )
                amqp.send_task_message(producer, p.name, message, queue=queue)
        return [p.dispatch_id for p in jobs]


@dataclass
class Side:
    """One dispatcher of the end-to-end run, and how to drop what it sent."""

    dispatcher: BaseDispatcher
    clear: Callable[[], object]
    pools: Callable[[], list[Any]]
    """The redis-py pools its messages go through (to check which parser they use)."""


def _dramatiq_sides(url: str, client: Any) -> dict[str, Side]:
    sides: dict[str, Side] = {}
    for name, cls in (
        ("current", DramatiqDispatcher),
        ("plain_message", PlainMessageDramatiqDispatcher),
        ("no_hiredis", DramatiqDispatcher),
    ):
        queue = f"bench-constructs-{name}-{uuid.uuid4().hex[:8]}"
        dispatcher = cls(url, queue)
        assert dispatcher.client is not None
        if name == "no_hiredis":
            _pure_python(dispatcher.client.connection_pool)
        keys = (f"dramatiq:{queue}", f"dramatiq:{queue}.msgs")
        pool = dispatcher.client.connection_pool
        sides[name] = Side(dispatcher, lambda keys=keys: client.delete(*keys), lambda p=pool: [p])
    return sides


def _celery_pools(dispatcher: CeleryDispatcher) -> list[Any]:
    with dispatcher.app.producer_or_acquire() as producer:
        return [producer.channel.pool]


def _celery_sides(url: str, client: Any) -> dict[str, Side]:
    sides: dict[str, Side] = {}
    for name, cls in (
        ("current", CeleryDispatcher),
        ("plain_body", PlainBodyCeleryDispatcher),
        ("no_hiredis", CeleryDispatcher),
    ):
        queue = f"bench-constructs-{name}-{uuid.uuid4().hex[:8]}"
        dispatcher = cls(url, queue)
        if name == "no_hiredis":
            dispatcher.app.conf.broker_transport = f"{__name__}:PurePythonTransport"
        sides[name] = Side(
            dispatcher,
            lambda queue=queue: client.delete(queue),
            lambda d=dispatcher: _celery_pools(d),
        )
    return sides


VARIANTS: dict[str, dict[str, tuple[str, str]]] = {
    "dramatiq": {
        "dramatiq_message": ("current", "plain_message"),
        "hiredis": ("current", "no_hiredis"),
    },
    "celery": {"celery_body": ("current", "plain_body"), "hiredis": ("current", "no_hiredis")},
}
"""backend -> {construct: (its clever side, its plain side)} of the end-to-end run."""


def _check_parsers(backend: str, sides: dict[str, Side]) -> None:
    """Fail rather than compare hiredis with hiredis: the `no_hiredis` side must parse in
    Python, the others with hiredis."""
    for name, side in sides.items():
        found = _parsers(side.pools())
        python = name == "no_hiredis" or not HIREDIS_AVAILABLE
        expected = PYTHON_PARSERS if python else {"_HiredisParser"}
        if not found or not found <= expected:
            raise RuntimeError(f"{backend} {name}: its connections parse with {found or 'none'}")


def end_to_end(env: Env, backend: str) -> dict[str, Timings]:
    """`dispatch_sync` of each payload size to Redis through every side of `backend`, the
    sides interleaved: per size, the `Timings` of all of them."""
    config, client = env.config, env.redis_client()
    make = _dramatiq_sides if backend == "dramatiq" else _celery_sides
    sides = make(env.redis_url, client)
    timings: dict[str, Timings] = {}
    try:
        for size in SIZES:
            payload, n = PAYLOADS[size], config.n(size)
            env.log(f"constructs: {backend} dispatch_sync, {size} payload, {n:,} x {config.rounds}")

            def side(s: Side, payload: dict[str, Any] = payload) -> Callable[[int], float]:
                dispatch = s.dispatcher.dispatch_sync
                return lambda k: timed(k, lambda _: dispatch(noop, payload), after=s.clear)

            timings[size] = interleave(
                {name: side(s) for name, s in sides.items()},
                n,
                config.rounds,
                warmup_n=min(config.warmup_n, n),
                slices=min(config.slices, n),
                progress=env.log,
            )
            _check_parsers(backend, sides)
    finally:
        for s in sides.values():
            s.clear()
            s.dispatcher.close()
        client.close()
    return timings


# -- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """An end-to-end figure: wall µs per dispatch, per round."""

    backend: str
    size: str
    us: list[float]

    @property
    def median(self) -> float:
        return median(self.us)

    @property
    def spread(self) -> float:
        return max(self.us) - min(self.us)

    def describe(self) -> str:
        value, low, high = spread(self.us)
        return f"{self.backend} {self.size} {value:,.0f} µs [{low:,.0f}–{high:,.0f}]"


def _size_label(size: str) -> str:
    return f"{PAYLOAD_BYTES[size]:,} B payload"


def _e2e_row(figure: Figure, n: int) -> Row:
    suffix = "" if figure.size == SMALL else f".{figure.size}"
    return Row.of(
        figure.us,
        id=f"constructs.e2e.{figure.backend}{suffix}",
        compares=f"wall µs per dispatch_sync of a {_size_label(figure.size)} to Redis "
        f"({figure.backend}, the current adapter), per round: what each construct is set "
        "against; its spread is the largest round minus the smallest",
        ours=f"dispatch_sync {figure.median:,.0f} µs",
        baseline=f"spread {figure.spread:,.0f} µs",
        n=n,
        unit=MICROS,
        lower_is_better=True,
        figures={"e2e_us": figure.median, "spread_us": figure.spread},
        samples={"e2e_us": figure.us},
    )


def _construct_row(
    construct: Construct,
    size: str,
    backend: str | None,
    clever_us: list[float],
    plain_us: list[float],
    saving_us: list[float],
    n: int,
    against: Figure,
    others: Sequence[Figure],
    how: str,
    extra: dict[str, list[float]] | None = None,
) -> Row:
    saving = median(saving_us)
    moves = saving > against.spread
    share = saving / against.median * 100
    state = "kept" if construct.kept else "removed"
    verdict = (
        f"moves the figure: saves more than its spread ({saving:,.1f} > {against.spread:,.1f} µs)"
        if moves
        else f"within the spread ({saving:,.1f} ≤ {against.spread:,.1f} µs)"
    )
    figures = {
        "clever_us": median(clever_us),
        "plain_us": median(plain_us),
        "saving_us": saving,
        "e2e_us": against.median,
        "e2e_low_us": min(against.us),
        "e2e_high_us": max(against.us),
        "e2e_spread_us": against.spread,
        "saving_pct_of_e2e": share,
        "moves": float(moves),
        "kept": float(construct.kept),
    }
    for other in others:
        figures[f"e2e_{other.backend}_us"] = other.median
        figures[f"e2e_{other.backend}_spread_us"] = other.spread
    samples = {"clever_us": clever_us, "plain_us": plain_us, "saving_us": saving_us}
    for key, values in (extra or {}).items():
        samples[key] = values
        figures[key] = median(values)
    return Row.of(
        saving_us,
        id=construct.row_id(size, backend),
        compares=f"{construct.what} ({state}): µs saved per {construct.per}, "
        f"{construct.plain} minus {construct.clever}, {_size_label(size)}; {how}",
        ours=f"{construct.clever} {median(clever_us):,.2f} µs",
        baseline=f"{construct.plain} {median(plain_us):,.2f} µs",
        n=n,
        unit=MICROS,
        figures=figures,
        samples=samples,
        note=f"{state}; against {against.describe()}: {verdict}, {share:.1f} % of the figure",
    )


def to_rows(pairs: dict[str, Any], e2e: dict[str, dict[str, Timings]]) -> list[Row]:
    """The rows from the pairs' document and each backend's end-to-end timings."""
    figures = {
        (backend, size): Figure(backend, size, [s / t.n * 1e6 for s in t.seconds["current"]])
        for backend, by_size in e2e.items()
        for size, t in by_size.items()
    }
    result = [
        _e2e_row(figures[(backend, size)], e2e[backend][size].n)
        for backend in BACKENDS
        for size in SIZES
    ]
    for construct in filter(_available, CONSTRUCTS):
        for size in construct.sizes:
            if not construct.adapter:
                got = pairs["pairs"][construct.name][size]
                candidates = [figures[(b, size)] for b in construct.backends]
                against = min(candidates, key=lambda f: f.spread)
                result.append(
                    _construct_row(
                        construct,
                        size,
                        None,
                        got["clever_us"],
                        got["plain_us"],
                        got["saving_us"],
                        int(got["iterations"][0]),
                        against,
                        candidates,
                        f"CPU µs per operation in a fresh process, {pairs['repeats']} repeats "
                        "(the sides alternating)",
                    )
                )
                continue
            for backend in construct.backends:
                clever_side, plain_side = VARIANTS[backend][construct.name]
                t = e2e[backend][size]
                clever_cpu, plain_cpu = t.cpu_us(clever_side), t.cpu_us(plain_side)
                wall = {k: [s / t.n * 1e6 for s in t.seconds[k]] for k in (clever_side, plain_side)}
                result.append(
                    _construct_row(
                        construct,
                        size,
                        backend,
                        clever_cpu,
                        plain_cpu,
                        [p - c for p, c in zip(plain_cpu, clever_cpu)],
                        t.n,
                        figures[(backend, size)],
                        [figures[(backend, size)]],
                        f"this process's CPU µs per dispatch_sync to Redis, dispatchers "
                        f"interleaved in the end-to-end run ({t.rounds} rounds)",
                        {
                            "wall_saving_us": [
                                p - c for p, c in zip(wall[plain_side], wall[clever_side])
                            ]
                        },
                    )
                )
    return result


def run(env: Env) -> list[Row]:
    pairs = _run_pairs(env)
    e2e = {backend: end_to_end(env, backend) for backend in BACKENDS}
    return to_rows(pairs, e2e)


# -- the docs' table ------------------------------------------------------------------------------

TABLE_HEADER = (
    "construct",
    "in the code",
    "clever / plain, µs",
    "saving, µs [min–max]",
    "set against: dispatch_sync to Redis, µs [min–max]",
    "its spread",
    "verdict",
)


def _construct_of(row_id: str) -> Construct | None:
    parts = row_id.split(".")
    if len(parts) < 2 or parts[0] != "constructs":
        return None
    return BY_NAME.get(parts[1])


def is_construct_row(row_id: str) -> bool:
    """A construct's row (not an end-to-end figure): a line of the constructs' table."""
    return _construct_of(row_id) is not None


def markdown_table(rows: Iterable[Row]) -> str:
    """The constructs' rows as the docs' table: one line per construct, size and backend."""

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    out = [line(TABLE_HEADER), line(["---"] * len(TABLE_HEADER))]
    described: set[str] = set()
    for row in rows:
        construct = _construct_of(row.id)
        if construct is None:
            continue
        f = row.figures
        size = next((s for s in SIZES if row.id.endswith(f".{s}")), SMALL)
        if construct.name in described:
            what = f"the same, {PAYLOAD_BYTES[size]:,} B"
        else:
            what = f"{construct.what}: {construct.clever} vs {construct.plain}"
            described.add(construct.name)
        against = (
            row.note.split("against ", 1)[1].split(":", 1)[0] if "against " in row.note else ""
        )
        spread_us = f.get("e2e_spread_us", 0.0)
        verdict = (
            f"**moves it** ({row.value / spread_us:.1f}× the spread)"
            if f.get("moves") and spread_us > 0
            else "within the spread"
        )
        out.append(
            line(
                [
                    f"`{row.id}`: {what}",
                    "kept" if construct.kept else "removed",
                    f"{f.get('clever_us', 0):,.2f} / {f.get('plain_us', 0):,.2f} per {construct.per}",
                    f"{row.value:,.2f} [{row.low:,.2f}–{row.high:,.2f}]",
                    against,
                    f"{spread_us:,.0f}",
                    verdict,
                ]
            )
        )
    return "\n".join(out)


# -- command line -------------------------------------------------------------------------------


def report(document: dict[str, Any]) -> str:
    lines = [f"µs per operation, median [min–max] of {document['repeats']} repeats (CPU)"]
    for name, by_size in document["pairs"].items():
        for size, got in by_size.items():
            c, p, s = (spread(got[k]) for k in ("clever_us", "plain_us", "saving_us"))
            lines.append(
                f"  {name:24} {size:6} clever {c[0]:9.2f}  plain {p[0]:9.2f}  "
                f"saving {s[0]:9.2f} [{s[1]:.2f}–{s[2]:.2f}]"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.constructs", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--pairs", action="store_true", help="the in-process pairs alone")
    parser.add_argument("--budget", type=float, default=0.2, help="CPU seconds per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write every repeat here")
    args, rest = parser.parse_known_args(argv)
    if not args.pairs:
        from .__main__ import main as benchmarks

        return benchmarks(["--only", "constructs", *rest])
    document = measure_pairs(args.budget, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(document, indent=1))
    print(report(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
