"""Unique names for queues and jobs, so that no two tests share broker state."""

from __future__ import annotations

import uuid


def new_queue_name(prefix: str = "jobs") -> str:
    """A unique queue name (tests, isolated workers)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
