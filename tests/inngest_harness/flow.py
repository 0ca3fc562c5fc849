"""Function `concurrency` and `throttle`, as the stand-in executor applies them to each call.

Modelled on Inngest's documented behaviour: at most `limit` calls of a function in flight per
concurrency key value (a run waiting for a retry holds no slot), waiting calls taken first in,
first out; a throttle is GCRA with `period / limit` between starts and `burst` at once (Inngest's
default burst of 1 spaces the starts evenly), every call a start. Keys are `event.data.<path>`
expressions (anything else is one key for the whole function). Not modelled: account-level
concurrency, `scope` other than `fn`, and several throttle keys per function.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from typing import Any

from .records import RegisteredFunction, Run

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in an SDK duration string (`1s`, `90s`, `2m`, `1h`, `7d`, `1w`)."""
    match = re.fullmatch(r"(\d+)([smhdw])", text)
    if match is None:
        raise ValueError(f"unsupported duration {text!r}")
    return int(match[1]) * _UNITS[match[2]]


def _key(fn: RegisteredFunction, what: str, expression: Any, event: dict[str, Any]) -> str:
    value: Any = None
    if isinstance(expression, str) and expression.startswith("event."):
        value = event
        for part in expression.split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
    return f"{fn.id}:{what}:{json.dumps(value, sort_keys=True)}"


class FlowGate:
    """Concurrency slots and throttle state of every function (used under the harness lock)."""

    def __init__(self) -> None:
        self._running: dict[str, set[str]] = {}
        self._waiting: dict[str, deque[str]] = {}
        self._reserved: dict[str, set[str]] = {}
        self._held: dict[str, list[str]] = {}
        self._tat: dict[str, float] = {}

    def admit(self, fn: RegisteredFunction, run: Run, now: float) -> float | None:
        """None when the call may start now (and its slots are taken); else the wall time to
        try again, or `math.inf` to wait until `release` wakes it."""
        slots = [
            (int(c["limit"]), _key(fn, "c", c.get("key"), run.event))
            for c in fn.raw.get("concurrency") or []
        ]
        for limit, key in slots:
            running, reserved = self._running.get(key, set()), self._reserved.get(key, set())
            waiting = self._waiting.setdefault(key, deque())
            mine = run.run_id in reserved
            if not mine and (len(running) + len(reserved) >= limit or waiting):
                if run.run_id not in waiting:
                    waiting.append(run.run_id)
                return math.inf
        throttle = fn.raw.get("throttle")
        if throttle:
            limit, burst = int(throttle["limit"]), int(throttle.get("burst") or 1)
            emission = parse_duration(str(throttle["period"])) / limit
            key = _key(fn, "t", throttle.get("key"), run.event)
            allow_at = self._tat.get(key, now) - emission * (burst - 1)
            if now < allow_at:
                return allow_at
            self._tat[key] = max(self._tat.get(key, now), now) + emission
        for _, key in slots:
            self._reserved.get(key, set()).discard(run.run_id)
            self._running.setdefault(key, set()).add(run.run_id)
            self._held.setdefault(run.run_id, []).append(key)
        return None

    def release(self, run: Run) -> list[str]:
        """Free the slots of `run`'s call that ended; returns the runs to wake, one per slot."""
        woken: list[str] = []
        for key in self._held.pop(run.run_id, []):
            self._running[key].discard(run.run_id)
            waiting = self._waiting.get(key)
            if waiting:
                run_id = waiting.popleft()
                self._reserved.setdefault(key, set()).add(run_id)
                woken.append(run_id)
        return woken
