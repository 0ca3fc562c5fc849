"""What makes a fetched Dramatiq message one that cannot run (`fault_of`): the check
`WorkerRedisBroker` (fixes.py) applies before a message reaches a worker thread."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.errors import DecodeError

_TYPED_FIELDS = (("actor_name", str), ("message_id", str), ("kwargs", dict), ("options", dict))


def fault_of(data: bytes | None, queue_name: str, redis_id: str | None = None) -> tuple[str, Any]:
    """Why `data` cannot run as a message fetched from `queue_name` ("" when it can), and the
    job name it carries. Dramatiq decodes any JSON object with the right keys whatever their
    types; a wrong type or another queue's name then stops a consumer or worker thread, or
    leaves the id in the acks set for as long as the worker lives."""
    if data is None:
        return "no message body", None
    try:
        message = dramatiq.Message.decode(data)
    except DecodeError as exc:
        return f"not a Dramatiq message: {type(exc.error).__name__}: {exc.error}", None
    name = message.actor_name if isinstance(message.actor_name, str) else None
    for field, kind in _TYPED_FIELDS:
        if not isinstance(getattr(message, field), kind):
            return f"its {field} is not a {kind.__name__}", name
    options = message.options
    if not isinstance(options.get("redis_message_id"), str) or redis_id not in (
        None,
        options["redis_message_id"],
    ):
        return "its options.redis_message_id is not the id it was queued under", name
    if not isinstance(options.get("retries", 0), int):
        return "its options.retries is not an int", name
    if message.queue_name != queue_name:
        return f"its queue_name {message.queue_name!r} is not {queue_name!r}", name
    return "", name
