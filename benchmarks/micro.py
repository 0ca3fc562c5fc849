"""The CPU micro-benchmark: what the core itself costs per dispatch and per job, stage by stage.

    python -m benchmarks.micro                   # the breakdown, printed
    python -m benchmarks.micro --smoke           # every figure, tiny repeats (the tests)
    python -m benchmarks.micro --json out.json   # every repeat of every figure
    python -m benchmarks.micro --instructions    # + callgrind instruction counts (valgrind)
    python -m benchmarks.micro --profile dispatch   # a pyinstrument profile (or `worker`)

Dispatch: `dispatch_sync` on a dispatcher whose `_send` does nothing, against that `_send`
alone: the difference is the core's dispatch path (validation, serialisation and the size
check, the dispatch id, idempotency, receipt and `scheduled` event). It is reported against
its floor, what pydantic itself takes to do the part no dispatch can skip:
`Note.model_validate(payload).model_dump_json()` of the same payload, timed in the same
repeats (`core.dispatch` is core / floor). Each stage is then timed on its own, with the same
inputs, so the sum can be checked against the whole.

Worker: `JobWorker.run` of a delivery as an adapter makes it (`delivery_from_call`), against
what a plain task does with the same message (validate the payload, call the handler), with
the `jobs_core` logger at WARNING, INFO and DEBUG behind a handler that formats each line as
the `dramatiq` command does and writes it to /dev/null: `core.worker` is `JobWorker.run` /
the plain body, and the INFO and DEBUG rows are what the per-job log lines cost (µs).

Times are this process's CPU time (`time.process_time_ns`), so time the machine spends on
other processes does not count; each figure is measured `repeats` times, rotating the order of
the sides of a ratio or a difference, and reported as the median [min–max] of the per-repeat
ratios (or differences).
Callgrind's instruction counts (optional) do not depend on the load at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from jobs_core.calling import run_without_loop
from jobs_core.dispatch.dispatcher import BaseDispatcher, resolve_eta
from jobs_core.dispatch.idempotency import Claim, scoped_key
from jobs_core.dispatch.port import DispatchReceipt
from jobs_core.dispatch.prepared import PreparedJob, keyed_dispatch_id
from jobs_core.instrumentation import JobEvent, safe_record, with_logging
from jobs_core.jobs.payload import (
    _DIGITS_AS_ZEROS,
    _SIXTEEN_DIGITS,
    encode_payload,
    parse_payload,
    validate_payload,
)
from jobs_core.worker import Delivery, JobWorker, delivery_from_call
from jobs_core.worker.worker import settle

from .config import SIZES, SMALL, Config
from .counter import SharedCounter
from .jobs import JOB_NAME, PAYLOAD_BYTES, PAYLOADS, Note, jobs, noop
from .processes import PYTHON, WorkerProcess
from .results import MICROS, RATIO, Row, spread
from .scenario import Env
from .timing import wait_until

Op = Callable[[], object]
FLOOR_TARGET = 2.0
"""`core.dispatch`: the core's dispatch path of a 200 B payload may take at most this many
times pydantic's own validate + dump of it (issue 27)."""
LOGFORMAT = (
    "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"
)
"""The format the `dramatiq` command logs with (jobs_core's worker command runs it)."""
INSTRUCTION_RUNS = (2_000, 6_000)
CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def rows(config: Config) -> list[str]:
    ids = ["core.dispatch", "core.dispatch.keyed"]
    ids += [f"core.dispatch.{size}" for size in SIZES if size != SMALL]
    return [*ids, "core.worker", "core.worker.info_line", "core.worker.debug_lines"]


# -- measuring ----------------------------------------------------------------------------


def _per_op_us(op: Op, iterations: int) -> float:
    start = time.process_time_ns()
    for _ in range(iterations):
        op()
    return (time.process_time_ns() - start) / iterations / 1000


def _iterations(op: Op, budget: float) -> int:
    """How many calls of `op` take about `budget` CPU seconds."""
    calls, start = 0, time.process_time()
    while (spent := time.process_time() - start) < budget / 10 or calls < 10:
        op()
        calls += 1
    return max(10, int(calls * budget / max(spent, 1e-9)))


class Meter:
    """Measures ops `repeats` times each, alternating the order of paired ops."""

    def __init__(self, budget: float, repeats: int) -> None:
        self.budget = budget
        self.repeats = repeats
        self.loop_us = 0.0
        self.loop_us = min(self.measure(lambda: None))  # a call of the loop itself
        self.iterations = 0
        """Calls per repeat of the first op of the last `pair`."""

    def measure(self, op: Op) -> list[float]:
        iterations = _iterations(op, self.budget)
        return [_per_op_us(op, iterations) - self.loop_us for _ in range(self.repeats)]

    def pair(self, a: Op, b: Op) -> tuple[list[float], list[float]]:
        """Per repeat: µs per call of `a` and of `b`, measured back to back."""
        got = self.group({"a": a, "b": b})
        return got["a"], got["b"]

    def group(self, ops: dict[str, Op]) -> dict[str, list[float]]:
        """Per repeat: µs per call of each op, all measured back to back, the op that goes
        first rotating from repeat to repeat."""
        names = list(ops)
        counts = {name: _iterations(ops[name], self.budget) for name in names}
        self.iterations = counts[names[0]]
        got: dict[str, list[float]] = {name: [] for name in names}
        for r in range(self.repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                got[name].append(_per_op_us(ops[name], counts[name]) - self.loop_us)
        return got


def _minus(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x - y for x, y in zip(a, b)]


def _over(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x / y for x, y in zip(a, b)]


def _med(values: Sequence[float]) -> float:
    return spread(values)[0]


# -- what is measured ---------------------------------------------------------------------


class NoSend(BaseDispatcher):
    """A dispatcher whose transport does nothing: what remains is the core's path."""

    backend_name = "micro"

    def _send(self, prepared: Sequence[PreparedJob]) -> list[str]:
        return [p.dispatch_id for p in prepared]


class NoStore:
    """An idempotency store that claims every key at no cost: the core's keyed path alone."""

    def claim(self, claims: Sequence[Claim], wait: float = 0.0) -> list[str | None]:
        return [None] * len(claims)

    def confirm(self, claims: Sequence[Claim]) -> None:
        pass

    def release(self, claims: Sequence[Claim]) -> None:
        pass


class NoSettlement:
    def retry(self, delivery: Delivery, delay: timedelta) -> None:
        pass

    def give_up(self, delivery: Delivery, error: BaseException) -> None:
        pass


def dispatch_figures(meter: Meter, size: str, stages: bool) -> dict[str, list[float]]:
    """µs per dispatch of `payload` at `size`: whole, transport, keyed, the floor (pydantic's
    validate + dump of the payload), and each stage."""
    payload = PAYLOADS[size]
    plain, keyed = NoSend(), NoSend(idempotency=NoStore())
    prepared = plain.prepare(noop, payload)
    keys = (f"k{i}" for i in range(10**12))
    timed = meter.group(
        {
            "dispatch": lambda: plain.dispatch_sync(noop, payload),
            "transport": lambda: plain._send([prepared]),
            "floor": lambda: Note.model_validate(payload).model_dump_json(),
            "keyed": lambda: keyed.dispatch_sync(noop, payload, idempotency_key=next(keys)),
        }
    )
    whole, send, floor = timed["dispatch"], timed["transport"], timed["floor"]
    core, keyed_core = _minus(whole, send), _minus(timed["keyed"], send)
    out = {
        "iterations": [float(meter.iterations)],
        "dispatch_us": whole,
        "transport_us": send,
        "floor_us": floor,
        "core_us": core,
        "keyed_core_us": keyed_core,
        "core_over_floor": _over(core, floor),
        "keyed_core_over_floor": _over(keyed_core, floor),
    }
    model = validate_payload(noop, payload)
    serializer = type(model).__pydantic_serializer__
    out["stage_validate_us"] = meter.measure(lambda: validate_payload(noop, payload))
    out["stage_serialise_us"] = meter.measure(lambda: serializer.to_json(model, round_trip=True))
    out["stage_encode_us"] = meter.measure(lambda: encode_payload(noop, model, fresh=True))
    raw = serializer.to_json(model, round_trip=True)  # the scan for integers beyond 2**53 - 1:
    out["stage_int_scan_us"] = meter.measure(
        lambda: _SIXTEEN_DIGITS in raw.translate(_DIGITS_AS_ZEROS)
    )
    if not stages:
        return out
    events = plain.events
    scheduled = JobEvent("scheduled", "schedule", JOB_NAME, "id", 0, "micro")
    body = prepared.body
    out["stage_eta_us"] = meter.measure(lambda: resolve_eta(None, None))
    out["stage_prepared_job_us"] = meter.measure(
        lambda: PreparedJob(job=noop, payload=model, body=body, dispatch_id="id")
    )
    out["stage_prepare_us"] = meter.measure(lambda: plain.prepare(noop, payload))
    out["stage_claim_us"] = meter.measure(lambda: plain._claim([prepared]))
    out["stage_receipt_us"] = meter.measure(lambda: DispatchReceipt(JOB_NAME, "id", "micro"))
    out["stage_event_us"] = meter.measure(
        lambda: JobEvent("scheduled", "schedule", JOB_NAME, "id", 0, "micro")
    )
    out["stage_record_us"] = meter.measure(lambda: safe_record(events, scheduled))
    out["stage_receipts_us"] = meter.measure(
        lambda: plain._receipts([prepared], [prepared.dispatch_id], {})
    )
    out["stage_keyed_ids_us"] = meter.measure(
        lambda: (keyed_dispatch_id(JOB_NAME, "k1"), scoped_key(JOB_NAME, "k1"))
    )
    return out


def _logging_at(level: int) -> Callable[[], None]:
    """Configure the root logger as a worker command does, at `level`; returns an undo."""
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    sink = open(os.devnull, "w")  # closed by the undo
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter(LOGFORMAT))
    root.handlers[:] = [handler]
    root.setLevel(level)

    def undo() -> None:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        sink.close()

    return undo


def worker_figures(meter: Meter, size: str, stages: bool) -> dict[str, list[float]]:
    """µs per job: a plain task's body, `JobWorker.run` at each log level, and each stage."""
    data, counter = PAYLOADS[size], SharedCounter()
    worker, settlement = JobWorker(jobs, context=counter, backend="micro"), NoSettlement()
    handler, validate = noop.handler, Note.model_validate

    def run() -> object:
        delivery = delivery_from_call(JOB_NAME, (data,), {}, attempt=0, dispatch_id="id")
        return worker.run(delivery, settlement, noop)

    out: dict[str, list[float]] = {"iterations": []}
    bare: list[float] = []
    for name, level in (
        ("warning", logging.WARNING),
        ("info", logging.INFO),
        ("debug", logging.DEBUG),
    ):
        if not stages and level != logging.WARNING:
            continue
        undo = _logging_at(level)
        try:
            ran, plain = meter.pair(run, lambda: handler(validate(data), counter))
        finally:
            undo()
        out[f"run_{name}_us"] = ran
        out["iterations"] = out["iterations"] or [float(meter.iterations)]
        bare += plain
    out["bare_us"] = bare
    out["core_us"] = _minus(out["run_warning_us"], bare)
    out["run_over_bare"] = _over(out["run_warning_us"], bare)
    if "run_info_us" in out:
        out["info_line_us"] = _minus(out["run_info_us"], out["run_warning_us"])
        out["debug_lines_us"] = _minus(out["run_debug_us"], out["run_info_us"])
    out["stage_parse_us"] = meter.measure(lambda: parse_payload(noop, data))
    if not stages:
        return out
    delivery = Delivery(JOB_NAME, data, 0, "id")
    outcome = run()
    instrumentation = worker.instrumentation
    started = JobEvent("started", "execute", JOB_NAME, "id", 0, "micro")

    async def finished() -> object:
        return outcome

    out["stage_delivery_us"] = meter.measure(
        lambda: delivery_from_call(JOB_NAME, (data,), {}, attempt=0, dispatch_id="id")
    )
    out["stage_needs_loop_us"] = meter.measure(lambda: worker.needs_event_loop(noop))
    out["stage_with_logging_us"] = meter.measure(lambda: with_logging(instrumentation))
    out["stage_coroutine_us"] = meter.measure(lambda: run_without_loop(finished()))  # type: ignore[arg-type]
    out["stage_two_events_us"] = meter.measure(
        lambda: (
            JobEvent("started", "execute", JOB_NAME, "id", 0, "micro"),
            JobEvent(
                "completed", "execute", JOB_NAME, "id", 0, "micro", duration=timedelta(seconds=0.1)
            ),
        )
    )
    out["stage_two_records_us"] = meter.measure(
        lambda: (safe_record(instrumentation, started), safe_record(instrumentation, started))
    )
    out["stage_clock_us"] = meter.measure(
        lambda: timedelta(seconds=time.perf_counter() - time.perf_counter())
    )
    out["stage_settle_us"] = meter.measure(lambda: settle(delivery, outcome, settlement))  # type: ignore[arg-type]
    out["stage_handler_us"] = meter.measure(lambda: handler(validate(data), counter))
    counter.close()
    return out


def measure_all(budget: float, repeats: int) -> dict[str, Any]:
    """Every figure, as lists of per-repeat µs: `{"dispatch": {size: ...}, "worker": ...}`."""
    meter = Meter(budget, repeats)
    return {
        "budget_s": budget,
        "repeats": repeats,
        "loop_us": meter.loop_us,
        "payload_bytes": PAYLOAD_BYTES,
        "dispatch": {size: dispatch_figures(meter, size, size == SMALL) for size in SIZES},
        "worker": {size: worker_figures(meter, size, size == SMALL) for size in SIZES},
    }


# -- instruction counts (callgrind) -------------------------------------------------------


def _loop(kind: str, iterations: int) -> None:
    """The body of one callgrind run: set up, then `iterations` operations of `kind`."""
    payload = PAYLOADS[SMALL]
    plain = NoSend()
    prepared = plain.prepare(noop, payload)
    ops: dict[str, Op] = {
        "dispatch": lambda: plain.dispatch_sync(noop, payload),
        "transport": lambda: plain._send([prepared]),
    }
    op = ops[kind]
    for _ in range(200):  # the same warm-up in every run
        op()
    for _ in range(iterations):
        op()


def instructions() -> dict[str, float] | None:
    """Instructions per dispatch and per transport call, from callgrind (None without it):
    two runs of different lengths each, so that start-up cancels out."""
    if shutil.which("valgrind") is None:
        return None
    counts: dict[str, float] = {}
    for kind in ("dispatch", "transport"):
        totals = []
        for n in INSTRUCTION_RUNS:
            result = subprocess.run(
                [*CALLGRIND, PYTHON, "-m", "benchmarks.micro", "--loop", kind, f"--iterations={n}"],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONHASHSEED": "0"},
                timeout=600,
            )
            found = re.search(r"Collected : (\d+)", result.stderr)
            if found is None:
                raise RuntimeError(f"no instruction count from callgrind:\n{result.stderr[-2000:]}")
            totals.append(int(found.group(1)))
        counts[f"{kind}_instructions"] = (totals[1] - totals[0]) / (
            INSTRUCTION_RUNS[1] - INSTRUCTION_RUNS[0]
        )
    counts["core_instructions"] = counts["dispatch_instructions"] - counts["transport_instructions"]
    return counts


# -- rows, report, command line -----------------------------------------------------------


def _row(row_id: str, compares: str, ours: str, base: str, values: list[float], **kw: Any) -> Row:
    return Row.of(values, id=row_id, compares=compares, ours=ours, baseline=base, **kw)


def to_rows(document: dict[str, Any]) -> list[Row]:
    """The table's rows from `measure_all`'s document."""
    result = []
    for size, figures in document["dispatch"].items():
        suffix = "" if size == SMALL else f".{size}"
        stages = {k: _med(v) for k, v in figures.items()}
        what = f"{document['payload_bytes'][size]:,} B payload"
        result.append(
            _row(
                f"core.dispatch{suffix}",
                f"CPU per dispatch_sync of a {what} with a no-op _send, minus the _send alone "
                "(the core's dispatch path), over pydantic's own "
                "Note.model_validate(payload).model_dump_json() of it (the floor), per repeat",
                f"core {stages['core_us']:.1f} µs",
                f"floor {stages['floor_us']:.1f} µs",
                figures["core_over_floor"],
                n=int(figures["iterations"][0]),
                unit=RATIO,
                target=FLOOR_TARGET if size == SMALL else None,
                lower_is_better=True,
                figures=stages,
                samples=figures,
            )
        )
        if size == SMALL:
            result.append(
                _row(
                    "core.dispatch.keyed",
                    "the same with a new idempotency key each (a store that costs nothing), "
                    "over the same floor",
                    f"keyed core {stages['keyed_core_us']:.1f} µs",
                    f"floor {stages['floor_us']:.1f} µs",
                    figures["keyed_core_over_floor"],
                    n=int(figures["iterations"][0]),
                    unit=RATIO,
                    lower_is_better=True,
                    figures={
                        k: stages[k]
                        for k in ("core_us", "keyed_core_us", "floor_us", "keyed_core_over_floor")
                    },
                    samples={
                        k: figures[k]
                        for k in ("keyed_core_us", "floor_us", "keyed_core_over_floor")
                    },
                )
            )
    worker = document["worker"][SMALL]
    stages = {k: _med(v) for k, v in worker.items()}
    common = {"n": int(worker["iterations"][0]), "lower_is_better": True}
    result.append(
        _row(
            "core.worker",
            "CPU per job of JobWorker.run (delivery_from_call included, jobs_core logger at "
            "WARNING) over a plain task's body (validate + handler call), per repeat",
            f"JobWorker.run {stages['run_warning_us']:.1f} µs",
            f"plain body {stages['bare_us']:.1f} µs",
            worker["run_over_bare"],
            unit=RATIO,
            figures=stages,
            samples=worker,
            **common,
        )
    )
    for key, level, what in (
        ("info_line", "INFO", "a production worker's level: no line for a job that went well"),
        ("debug_lines", "DEBUG", "the `job started` and `job completed` lines"),
    ):
        up = "run_warning_us" if level == "INFO" else "run_info_us"
        result.append(
            _row(
                f"core.worker.{key}",
                f"CPU per job added with the logger at {level} ({what}), lines formatted as "
                "the dramatiq command formats them, written to /dev/null",
                f"at {level} {stages[f'run_{level.lower()}_us']:.1f} µs",
                f"one level up {stages[up]:.1f} µs",
                worker[f"{key}_us"],
                unit=MICROS,
                figures={
                    k: stages[k]
                    for k in (f"{key}_us", "run_warning_us", "run_info_us", "run_debug_us")
                },
                samples={f"{key}_us": worker[f"{key}_us"]},
                **common,
            )
        )
    counts = document.get("instructions")
    if counts:
        result[0].figures.update(counts)
        result[0].note = f"callgrind: {counts['core_instructions']:,.0f} instructions per dispatch"
    return result


def report(document: dict[str, Any]) -> str:
    """The breakdown as text: one line per figure, a column per payload size."""
    sizes = list(document["dispatch"])
    lines = [
        f"CPU µs per operation, median of {document['repeats']} repeats "
        f"(loop overhead {document['loop_us']:.2f} µs removed); payloads "
        + ", ".join(f"{s} = {document['payload_bytes'][s]:,} B" for s in sizes),
    ]
    for section in ("dispatch", "worker"):
        lines.append(f"\n{section}:".ljust(36) + "".join(s.rjust(12) for s in sizes))
        keys = [k for k in document[section][SMALL] if k.endswith("_us")]
        for key in keys:
            cells = [
                f"{_med(document[section][s][key]):12.2f}"
                if key in document[section][s]
                else " " * 12
                for s in sizes
            ]
            lines.append(f"  {key.removesuffix('_us')}".ljust(35) + "".join(cells))
    counts = document.get("instructions")
    if counts:
        lines.append("\ninstructions per operation (callgrind, 200B):")
        lines += [f"  {k}".ljust(35) + f"{v:12,.0f}" for k, v in counts.items()]
    return "\n".join(lines)


def run(env: Env) -> list[Row]:
    """The micro-benchmark in a fresh process (its heap is not the harness's), as rows."""
    config = env.config
    env.log("core: CPU micro-benchmark (fresh process)")
    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
        out = Path(tmp, "micro.json")
        args = [PYTHON, "-m", "benchmarks.micro", "--json", str(out)]
        args += ["--budget", str(config.micro_budget), "--repeats", str(config.rounds + 2)]
        if not config.quick and shutil.which("valgrind"):
            args.append("--instructions")
        with WorkerProcess(args) as worker:
            process = worker.process
            assert process is not None
            wait_until(
                lambda: process.poll() is not None, 900, "the micro-benchmark", interval=0.05
            )
            if process.returncode != 0:
                raise RuntimeError(f"the micro-benchmark failed:\n{worker.output()}")
        return to_rows(json.loads(out.read_text()))


def _profile(kind: str, seconds: float) -> str:
    from pyinstrument import Profiler

    payload = PAYLOADS[SMALL]
    plain, counter = NoSend(), SharedCounter()
    worker, settlement = JobWorker(jobs, context=counter, backend="micro"), NoSettlement()
    ops: dict[str, Op] = {
        "dispatch": lambda: plain.dispatch_sync(noop, payload),
        "worker": lambda: worker.run(
            delivery_from_call(JOB_NAME, (payload,), {}, attempt=0, dispatch_id="id"),
            settlement,
            noop,
        ),
    }
    op = ops[kind]
    profiler = Profiler(interval=0.0001)
    profiler.start()
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        for _ in range(100):
            op()
    profiler.stop()
    return str(profiler.output_text(unicode=True, color=False, show_all=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.micro", description=__doc__.split("\n")[0]
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", action="store_true", help="short repeats")
    modes.add_argument("--smoke", action="store_true", help="tiny repeats: every figure (tests)")
    parser.add_argument("--budget", type=float, default=None, help="CPU seconds per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write every repeat of every figure here")
    parser.add_argument("--instructions", action="store_true", help="callgrind counts too")
    parser.add_argument("--profile", choices=("dispatch", "worker"), help="print a profile")
    parser.add_argument("--loop", choices=("dispatch", "transport"), help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop:
        _loop(args.loop, args.iterations)
        return 0
    if args.profile:
        print(_profile(args.profile, 2.0))
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    budget = args.budget or Config.make(mode).micro_budget
    document = measure_all(budget, 3 if mode != "full" else args.repeats)
    if args.instructions:
        document["instructions"] = instructions()
    if args.json:
        args.json.write_text(json.dumps(document, indent=1))
    print(report(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
