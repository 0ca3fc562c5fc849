"""Item 3: a worker for a registry typed with a context (`JobRegistry[AppContext]`) whose jobs
take one, started without a context, is refused at start, naming `--context`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import pytest
from pydantic import BaseModel

from jobs_core import JobConfigError, JobRegistry
from jobs_core.__main__ import main
from jobs_core.backend import context_type, needs_context, require_context


@dataclass
class Shop:
    name: str


class Order(BaseModel):
    order_id: int


def _registry(registry: JobRegistry[Any], takes_context: bool = True) -> JobRegistry[Any]:
    if takes_context:

        @registry.job("shop.ship")
        def ship(payload: Order, ctx: Any) -> None: ...

    else:

        @registry.job("shop.log")
        def log(payload: Order) -> None: ...

    return registry


def test_the_worker_command_refuses_a_typed_registry_without_context(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBS_BROKER_URL", "redis://127.0.0.1:1/0")  # never reached
    code = main(["worker", "tests.newuser.apps:typed_jobs", "--backend", "celery"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "JobRegistry[AppContext]" in err and "newuser.typed" in err
    assert "--context MODULE:FACTORY" in err and "ctx=None" in err


def test_the_runtime_type_of_a_registry_is_its_context_type() -> None:
    assert context_type(JobRegistry[Shop]()) is Shop
    assert context_type(JobRegistry()) is Any

    class ShopJobs(JobRegistry[Shop]):
        pass

    assert context_type(ShopJobs()) is Shop


@pytest.mark.parametrize(
    ("registry", "needs"),
    [
        (_registry(JobRegistry[Shop]()), True),
        (_registry(JobRegistry[Shop](), takes_context=False), False),  # handler(payload)
        (_registry(JobRegistry()), False),  # any context, None included
        (_registry(JobRegistry[Any]()), False),
        (_registry(JobRegistry[None]()), False),
        (_registry(JobRegistry[Optional[Shop]]()), False),  # noqa: UP045
        (_registry(JobRegistry[Shop | None]()), False),
        (_registry(JobRegistry[Shop]()), True),
    ],
)
def test_which_registries_need_a_context(registry: JobRegistry[Any], needs: bool) -> None:
    assert needs_context(registry) is needs
    if needs:
        with pytest.raises(JobConfigError, match="Pass context="):
            require_context(registry, None, "context=")
    require_context(registry, Shop("a shop"), "context=")  # given: never refused
    require_context(registry, lambda: Shop("a shop"), "context=")


def test_a_typed_registry_whose_jobs_take_no_context_starts_without_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the context check: the worker command goes on to start the backend's worker."""
    started: list[Any] = []

    def run_worker(registry: Any, *, context: Any, settings: Any, argv: list[str]) -> int:
        started.append((registry.names(), context, settings.backend))
        return 0

    from jobs_core.backends import celery

    monkeypatch.setattr(celery, "run_worker", run_worker)
    monkeypatch.setitem(os.environ, "JOBS_BROKER_URL", "redis://127.0.0.1:1/0")
    assert main(["worker", "tests.newuser.apps:context_free_jobs", "--backend", "celery"]) == 0
    assert started == [(["newuser.context_free"], None, "celery")]
