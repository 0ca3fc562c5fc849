"""Fuzzing (issue 7): arbitrary JSON-like values and bytes into dispatch validation and the
worker-side parser. Only `JobPayloadError` may escape, never KeyError, TypeError or a crash;
on the worker side the run ends as a clean give-up, never a retry loop.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from jobs_core import JobPayloadError, JobRegistry, Retry
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.testing import RecordingInstrumentation
from jobs_core.worker import Delivery, JobWorker


class Inner(BaseModel):
    label: str
    weight: float | None = None


class Order(BaseModel):
    order_id: UUID
    placed_at: datetime
    total: Decimal
    lines: list[Inner]
    note: str | None = None


jobs: JobRegistry[Any] = JobRegistry()
handled: list[Order] = []


@jobs.job("fuzz.order", retry=Retry(attempts=2))
def handle(payload: Order, ctx: Any) -> None:
    handled.append(payload)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
order_like = st.fixed_dictionaries(
    {},
    optional={
        "order_id": st.one_of(st.uuids().map(str), json_values),
        "placed_at": st.one_of(st.datetimes().map(lambda d: d.isoformat()), json_values),
        "total": st.one_of(st.decimals(allow_nan=False).map(str), json_values),
        "lines": st.one_of(
            st.lists(st.fixed_dictionaries({"label": st.text()}, optional={"weight": json_values})),
            json_values,
        ),
        "note": json_values,
    },
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(json_values, order_like))
def test_dispatch_validation_only_raises_job_payload_error(value: Any) -> None:
    dispatcher = InlineDispatcher(instrumentation=RecordingInstrumentation())
    try:
        dispatcher.dispatch_sync(handle, value)
    except JobPayloadError as error:
        assert error.job_name == "fuzz.order"
        assert isinstance(error.errors, list) and error.errors
        str(error)


class _Noted:
    def retry(self, delivery: Delivery, delay: Any) -> None: ...

    def give_up(self, delivery: Delivery, error: BaseException) -> None: ...


def _worker_run(raw: Any) -> None:
    events = RecordingInstrumentation()
    worker: JobWorker[Any] = JobWorker(None, context=None, backend="fuzz", instrumentation=events)
    outcome = worker.run(Delivery(handle.name, raw, 0, "fuzz"), _Noted(), handle)
    if outcome.gave_up:
        assert isinstance(outcome.error, JobPayloadError), outcome.error
        assert events.kinds() == ["started", "failed"]
    else:
        assert outcome.completed, outcome
        assert events.kinds() == ["started", "completed"]


@FUZZ
@given(st.one_of(json_values, order_like))
def test_worker_parsing_of_values_gives_up_cleanly(value: Any) -> None:
    _worker_run(value)


@FUZZ
@given(st.binary(max_size=300))
def test_worker_parsing_of_bytes_gives_up_cleanly(raw: bytes) -> None:
    _worker_run(raw)


@FUZZ
@given(st.text(max_size=300))
def test_worker_parsing_of_text_gives_up_cleanly(raw: str) -> None:
    _worker_run(raw)
