"""The one rule for the names of jobs, schedules and events (C1, C29, C40): what every backend
takes as a task, actor, function or event name."""

from __future__ import annotations

import re

from ..errors import JobConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


def check_name(name: object, what: str) -> str:
    """`name` when it is a valid name for a `what` ("job", "schedule", "event"); otherwise a
    `JobConfigError` saying the rule."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise JobConfigError(
            f"invalid {what} name {name!r}: use letters, digits and . _ : / - "
            f"starting with a letter or digit (pattern {NAME_PATTERN.pattern})"
        )
    return name
