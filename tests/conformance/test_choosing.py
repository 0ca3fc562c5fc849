"""C24: `JOBS_BACKEND` picks the backend; unknown names and missing extras are clear errors."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from jobs_core import JobConfigError, JobsSettings, create_dispatcher
from jobs_core.backend import BACKEND_LIBRARIES, BUILTIN_BACKENDS

from .harness import BackendHarness


def test_C24_jobs_backend_picks_the_backend(
    harness: BackendHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = harness.settings()
    for key, value in harness.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("JOBS_BACKEND", harness.name)
    dispatcher = create_dispatcher(settings=settings)
    assert dispatcher.backend_name == harness.name  # type: ignore[attr-defined]
    from_env = create_dispatcher()
    assert from_env.backend_name == harness.name  # type: ignore[attr-defined]
    close = getattr(dispatcher, "close", None)
    if close:
        close()
    close = getattr(from_env, "close", None)
    if close:
        close()


@pytest.mark.parametrize("name", ["rabbit", "in line", "celery2", ""])
def test_C24_unknown_backend_lists_the_valid_ones(harness: BackendHarness, name: str) -> None:
    with pytest.raises(JobConfigError) as caught:
        create_dispatcher(settings=JobsSettings(backend=name))
    message = str(caught.value)
    for valid in BUILTIN_BACKENDS:
        assert valid in message


def test_C24_missing_extra_names_the_extra(
    harness: BackendHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    if harness.name == "inline":
        pytest.skip("inline needs no extra: it is part of the core install")
    library = BACKEND_LIBRARIES[harness.name][0]
    monkeypatch.setitem(sys.modules, library, None)  # import now fails as if not installed
    monkeypatch.delitem(sys.modules, f"jobs_core.backends.{harness.name}", raising=False)
    with pytest.raises(JobConfigError) as caught:
        create_dispatcher(settings=harness.settings())
    assert f"jobs-core[{harness.name}]" in str(caught.value)


def test_C24_third_party_factory_string(harness: BackendHarness) -> None:
    made: list[Any] = []

    def factory(settings: JobsSettings, **kwargs: Any) -> str:
        made.append((settings.backend, sorted(kwargs)))
        return "custom-dispatcher"

    module = type(sys)("c24_thirdparty")
    module.factory = factory  # type: ignore[attr-defined]
    sys.modules["c24_thirdparty"] = module
    try:
        result = create_dispatcher(settings=JobsSettings(backend="c24_thirdparty:factory"))
        assert result == "custom-dispatcher"
        assert made == [("c24_thirdparty:factory", ["context", "instrumentation"])]
        with pytest.raises(JobConfigError, match="no 'missing'"):
            create_dispatcher(settings=JobsSettings(backend="c24_thirdparty:missing"))
        with pytest.raises(JobConfigError, match="cannot import"):
            create_dispatcher(settings=JobsSettings(backend="no_such_module_x:factory"))
    finally:
        del sys.modules["c24_thirdparty"]
