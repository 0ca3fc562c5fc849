"""Rows of the benchmark table: one figure each, with its spread, its target and every sample.

A row's `value` is the figure its target is about (a ratio ours / baseline, microseconds of
CPU, MiB), the median over the rounds; `low` and `high` are the smallest and largest per-round
values, so a reader sees how far one run can be trusted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .timing import Timings, median

RATIO = "×"
MICROS = "µs"
MIB = "MiB"


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@dataclass
class Row:
    """One line of the table."""

    id: str
    """`<backend>.<scenario>[.<variant>]`, e.g. `celery.dispatch.200KB`."""
    compares: str
    """What `ours` and `baseline` are, in words (the docs list it under the table)."""
    ours: str
    baseline: str
    n: int
    rounds: int
    value: float
    low: float
    high: float
    unit: str = RATIO
    target: float | None = None
    lower_is_better: bool = False
    cpu: str = ""
    """CPU per operation, ours / baseline, where the row measured it."""
    figures: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""
    loadavg: list[float] = field(default_factory=loadavg)

    @classmethod
    def of(cls, values: Sequence[float], **fields: Any) -> Row:
        """A row whose figure is the median of `values`, one per round (or repeat)."""
        value, low, high = spread(values)
        return cls(value=value, low=low, high=high, rounds=len(values), **fields)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value <= self.target if self.lower_is_better else self.value >= self.target

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of per-round values."""
    return median(values), min(values), max(values)


def rate(value: float) -> str:
    return f"{value:,.0f}/s"


def lower_is_better(
    values: Sequence[float],
    row_id: str,
    compares: str,
    ours: str,
    baseline: str,
    n: int,
    unit: str,
    samples: dict[str, list[float]],
    target: float | None = None,
) -> Row:
    """A row of `values` (one per round) where lower is better, its figures the medians of
    `samples` (the per-round values it was drawn from, all kept)."""
    return Row.of(
        values,
        id=row_id,
        compares=compares,
        ours=ours,
        baseline=baseline,
        n=n,
        unit=unit,
        target=target,
        lower_is_better=True,
        figures={key: median(per_round) for key, per_round in samples.items()},
        samples=samples,
    )


def micros_beside(
    values: Sequence[float],
    row_id: str,
    compares: str,
    n: int,
    sides: dict[str, tuple[str, list[float]]],
) -> Row:
    """A `lower_is_better` row of `values`, microseconds per operation, beside the two things
    measured with it in the same rounds: `sides` names each (ours first) by its key, with its
    label and its per-round µs. `ours` and `baseline` read `<label> <median> µs`; each side is
    kept as `<key>_us`."""
    ours, baseline = (f"{label} {median(us):,.0f} µs" for label, us in sides.values())
    samples = {f"{key}_us": us for key, (_, us) in sides.items()}
    return lower_is_better(values, row_id, compares, ours, baseline, n, MICROS, samples)


def compare(
    row_id: str,
    compares: str,
    timings: Timings,
    top: str,
    bottom: str,
    *,
    target: float | None = None,
    labels: tuple[str, str] | None = None,
    note: str = "",
) -> Row:
    """A row for two sides timed together: ratio = top's rate / bottom's, per round.

    `labels` name the two sides in the table (default: the side names); this process's CPU per
    operation of each side is kept as `<side>_cpu_us`.
    """
    ratios = timings.ratios(top, bottom)
    value, low, high = spread(ratios)
    top_label, bottom_label = labels or ("", bottom)
    figures = {
        f"{top}_per_s": median(timings.rates(top)),
        f"{bottom}_per_s": median(timings.rates(bottom)),
        f"{top}_cpu_us": median(timings.cpu_us(top)),
        f"{bottom}_cpu_us": median(timings.cpu_us(bottom)),
    }
    samples = {f"{side}_seconds": timings.seconds[side] for side in (top, bottom)}
    samples.update({f"{side}_cpu_seconds": timings.cpu[side] for side in (top, bottom)})
    samples["ratio"] = ratios
    return Row(
        id=row_id,
        compares=compares,
        ours=f"{top_label} {rate(figures[f'{top}_per_s'])}".strip(),
        baseline=f"{bottom_label} {rate(figures[f'{bottom}_per_s'])}",
        n=timings.n,
        rounds=timings.rounds,
        value=value,
        low=low,
        high=high,
        target=target,
        cpu=f"{figures[f'{top}_cpu_us']:,.0f} / {figures[f'{bottom}_cpu_us']:,.0f}",
        figures=figures,
        samples=samples,
        note=note,
    )


# -- the table ----------------------------------------------------------------------------

HEADER = ("row", "n×rounds", "ours", "baseline", "median [min–max]", "target", "met", "CPU µs/op")


def _number(value: float, unit: str, signed: bool = True) -> str:
    if unit == RATIO:
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if unit == MIB:
        return f"{value:+.2f}" if signed else f"{value:.2f}"
    return f"{value:,.1f}"


def cells(row: Row) -> list[str]:
    unit = row.unit
    value = _number(row.value, unit)
    if row.target is not None and value == _number(row.target, unit, signed=False):
        value = f"{row.value:.3f}"  # 0.949 would print as its target, 0.95, and be MISSED
    figure = (
        f"{value}{unit if unit == RATIO else ' ' + unit} "
        f"[{_number(row.low, unit)}–{_number(row.high, unit)}]"
    )
    target = ""
    if row.target is not None:
        sign = "≤" if row.lower_is_better else "≥"
        number = _number(row.target, unit, signed=False)
        target = f"{sign} {number}{unit if unit == RATIO else ' ' + unit}"
    met = {True: "met", False: "MISSED", None: ""}[row.met]
    return [row.id, f"{row.n:,}×{row.rounds}", row.ours, row.baseline, figure, target, met, row.cpu]


def format_table(rows: Iterable[Row]) -> str:
    """A plain-text table, one line per row, columns aligned."""
    lines = [list(HEADER)] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def markdown_table(rows: Iterable[Row]) -> str:
    """The same table in Markdown (the docs' performance page)."""

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    out = [line(HEADER), line(["---"] * len(HEADER))]
    out += [line([f"`{c[0]}`", *c[1:]]) for c in (cells(r) for r in rows)]
    return "\n".join(out)


def row_from_json(data: dict[str, Any]) -> Row:
    """A row read back from a run's JSON (to print its table again)."""
    known = {k: v for k, v in data.items() if k in Row.__dataclass_fields__}
    return Row(**known)
