"""Read what a Dramatiq worker dead-lettered on a Redis broker (`dramatiq:<queue>.XQ`)."""

from __future__ import annotations

from typing import Any

import dramatiq
import redis


def dead_letters(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """The dead-lettered messages of `queue`; an undecodable one as `{"message_id", "undecodable"}`."""
    client = redis.Redis.from_url(broker_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        raw: dict[Any, Any] = client.hgetall(f"dramatiq:{queue}.XQ.msgs")
    finally:
        client.close()
    decode = dramatiq.get_encoder().decode
    found: list[dict[str, Any]] = []
    for message_id, data in raw.items():
        try:
            found.append(dict(decode(data)))
        except Exception:
            found.append({"message_id": message_id.decode(), "undecodable": data})
    return found
