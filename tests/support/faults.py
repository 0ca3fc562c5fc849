"""Failures the tests inject: a step that fails once, a producer killed inside its dispatch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def fails_once(reason: str) -> Callable[[], None]:
    """A step body that raises `RuntimeError(reason)` the first time it is called and returns
    None after: the run that calls it is replayed (retried) exactly once, so a test can check
    what a replay does and does not repeat (steps already done, events already sent)."""
    failed = False

    def flaky() -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise RuntimeError(reason)

    return flaky


class Killed(BaseException):
    """Stands for the process dying (SIGKILL): no `except Exception` sees it."""


def dispatch_killed_before_enqueue(
    monkeypatch: pytest.MonkeyPatch,
    dispatcher: Any,
    job: Any,
    payload: Any,
    idempotency_key: str,
) -> None:
    """Dispatch `payload` to `job` with `idempotency_key` as a producer that dies (`Killed`)
    as it puts the message into the Redis transaction that also claims the key
    (`_enqueue_in`, where a dispatcher that enqueues in its idempotency store's transaction
    does so). The patch is undone on return: the test's next dispatch is the resend after the
    crash (C32)."""
    with monkeypatch.context() as patch:

        def die(*args: Any, **kwargs: Any) -> None:
            raise Killed

        patch.setattr(dispatcher, "_enqueue_in", die)
        with pytest.raises(Killed):
            dispatcher.dispatch_sync(job, payload, idempotency_key=idempotency_key)
