"""C1–C3: bad definitions fail when the job is defined, on every backend alike."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from jobs_core import JobConfigError, JobRegistry, Retry

from .harness import BackendHarness
from .models import Note


@pytest.mark.parametrize(
    "name", ["", "-starts-with-dash", "has space", "ünïcode", "semi;colon", ".dot"]
)
def test_C1_bad_job_name_is_refused_at_definition(harness: BackendHarness, name: str) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    with pytest.raises(JobConfigError, match="invalid job name"):
        jobs.define_job(name, payload=Note, handle=lambda p, c: None)


def test_C1_good_names_and_duplicates(harness: BackendHarness) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    for name in ["mail.welcome", "a", "A1_b-c:d/e.f"]:
        jobs.define_job(name, payload=Note, handle=lambda p, c: None)
    with pytest.raises(JobConfigError, match="already defined"):
        jobs.define_job("mail.welcome", payload=Note, handle=lambda p, c: None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": -1}, r"0\.\.20"),
        ({"attempts": 21}, r"0\.\.20"),
        ({"attempts": 2.5}, "must be an int"),
        ({"attempts": True}, "must be an int"),
        ({"min_backoff": timedelta(seconds=5), "max_backoff": timedelta(seconds=1)}, "<="),
        ({"min_backoff": timedelta(seconds=-1)}, "negative"),
        ({"max_backoff": 3}, "timedelta"),
    ],
)
def test_C2_bad_retry_is_refused_at_definition(
    harness: BackendHarness, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(JobConfigError, match=message):
        Retry(**kwargs)


def test_C2_retry_bounds_are_inclusive(harness: BackendHarness) -> None:
    assert Retry(attempts=0).attempts == 0
    assert Retry(attempts=20).attempts == 20
    assert Retry().attempts == 4


def test_C3_handler_without_payload_model_is_refused(harness: BackendHarness) -> None:
    jobs: JobRegistry[Any] = JobRegistry()

    def untyped(payload, ctx):  # type: ignore[no-untyped-def]
        return None

    def wrong_type(payload: dict[str, Any], ctx: Any) -> None:
        return None

    with pytest.raises(JobConfigError, match="no payload model"):
        jobs.define_job("c3.untyped", handle=untyped)
    with pytest.raises(JobConfigError, match="no payload model"):
        jobs.job("c3.dict")(wrong_type)
    with pytest.raises(JobConfigError, match="BaseModel subclass"):
        jobs.define_job("c3.payload", payload=dict, handle=untyped)  # type: ignore[arg-type]
    assert "c3.untyped" not in jobs


def test_C3_model_from_annotation(harness: BackendHarness) -> None:
    jobs: JobRegistry[Any] = JobRegistry()

    @jobs.job("c3.ok")
    def handler(payload: Note, ctx: Any) -> None: ...

    assert handler.payload_model is Note
    assert handler.retry == Retry()
