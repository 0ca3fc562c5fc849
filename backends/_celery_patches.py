"""Patches that keep Celery's promises where Celery 5.7 / kombu 5.7 alone would not.

Each names the upstream behaviour it works around and has a test that fails without it.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import InvalidTaskError
from kombu.exceptions import DecodeError

MALFORMED_MESSAGE_ERRORS: tuple[type[BaseException], ...] = (
    DecodeError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
)
"""What Celery's consumer raises while reading a malformed message, before any run."""

STRATEGY = f"{__name__}:malformed_messages_are_invalid"
"""The `Strategy=` option of a task that uses the patched strategy."""


def malformed_messages_are_invalid(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """Celery's default task strategy, with a malformed message turned into `InvalidTaskError`.

    Upstream, Celery reads a message's body in the consumer thread: a body of the wrong shape
    (not `[args, kwargs, embed]`) raised `ValueError` out of the consumer loop ("Unrecoverable
    error": the worker stopped, and so did every worker that fetched the message again), and a
    body that is not JSON was acked and dropped. As `InvalidTaskError`, Celery logs the message,
    rejects it without a retry and sends `task_rejected`, where the adapter keeps it.
    """
    from celery.worker.strategy import default  # worker side only

    handle = default(task, app, consumer, **options)

    def task_message_handler(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return handle(message, body, *args, **kwargs)
        except InvalidTaskError:
            raise
        except MALFORMED_MESSAGE_ERRORS as exc:
            headers = getattr(message, "headers", None) or {}
            raise InvalidTaskError(
                f"malformed message for job {task.name!r} (task id {headers.get('id')}): "
                f"{type(exc).__name__}: {str(exc)[:200]}"
            ) from exc

    return task_message_handler
