"""Admitting runs past their job's limits: the `FlowLimiter` protocol and the in-process limiter.

A limiter answers one question for a run about to start: may it start now, or how long should
it wait before asking again. Every limiter applies the same rule, so that inline (this module's
`LocalFlowLimiter`) and Celery and Dramatiq (`jobs_core.flow.redis_limiter.RedisFlowLimiter`, the same
rule in one Redis script) behave alike:

- concurrency: a run holds a slot from its start to its end; at most `limit` slots are held;
- throttle: a start is kept for `period`; at most `limit` starts are kept (a sliding window);
- waiting runs queue in the order they first waited (per limit, per key value): a run may take
  a free slot or start only if fewer runs ahead of it than there are free ones are about to ask
  again (told to ask within the next two polls, or at most `slack` ago). A waiter that does not
  ask again within `grace` after the time it was told leaves the queue (it rejoins at the back).
- a waiting run is told when to ask again: for a throttle, when the window has room for it;
  for a concurrency slot, after `poll` while it is among the next `limit` in line, then
  longer the further back it is (up to `max_poll`).

The worker seam (`jobs_core.worker`) asks, waits in the worker up to a short budget, and else
defers the run through its backend: a run that waits has not started, so it uses no attempt.
"""

from __future__ import annotations

import contextvars
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import DispatchError
from .options import Resource

WAIT_IN_WORKER = 1.0
"""Seconds a Celery or Dramatiq worker thread waits for a slot itself before it defers the run
through its broker: a broker round trip (and Dramatiq's delayed-message poll) costs more than a
short wait, and a long wait must not hold a worker thread."""

MAX_DEFER = 3600.0
"""The longest deferral at once: a run told to wait longer asks again after this."""

STORE_ERROR_WAIT = 1.0
"""Seconds a run is deferred when its limiter's store cannot be reached."""


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class Admission:
    """A limiter's answer: admitted (`wait == 0`; call `release()` when the run ends), or wait
    `wait` seconds and ask again."""

    wait: float = 0.0
    release: Callable[[], None] = field(default=_nothing)

    @property
    def admitted(self) -> bool:
        return self.wait <= 0


ADMITTED = Admission()


class FlowLimiter(Protocol):
    """Decides whether a run may start past its limits (see the module docstring)."""

    def admit(self, resources: Sequence[Resource], waiter: str) -> Admission:
        """Admit a run that needs every one of `resources`, or say how long it should wait.
        `waiter` names the run across its waits (its dispatch id), so it keeps its place."""
        ...


class _Waiter:
    __slots__ = ("due",)

    def __init__(self, due: float) -> None:
        self.due = due


class _Limit:
    """One resource's state in this process."""

    __slots__ = ("held", "period", "queue", "starts")

    def __init__(self, period: float) -> None:
        self.period = period
        self.held: set[str] = set()
        self.starts: deque[float] = deque()
        self.queue: dict[str, _Waiter] = {}  # in arrival order

    def used(self, resource: Resource) -> int:
        return len(self.held) if resource.kind == "c" else len(self.starts)

    def idle(self, now: float) -> bool:
        return not (
            self.held or self.queue or (self.starts and self.starts[-1] > now - self.period)
        )


_HELD: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "jobs_core_flow_held", default=()
)
"""Concurrency slots held by the runs in this context (an inline run and the runs it dispatched
inside it): a dispatch that needs a slot they hold all of would wait for itself."""


class LocalFlowLimiter:
    """The limits within one process (the inline backend's): threads and asyncio tasks that
    dispatch at once share them. Concurrency slots need no lease here: they go with the run."""

    def __init__(
        self,
        *,
        poll: float = 0.005,
        max_poll: float = 0.05,
        slack: float = 0.05,
        grace: float = 5.0,
    ) -> None:
        self.poll, self.max_poll, self.slack, self.grace = poll, max_poll, slack, grace
        self._lock = threading.Lock()
        self._limits: dict[str, _Limit] = {}
        self._holders = itertools.count()
        self._sweep_at = 1024

    def admit(self, resources: Sequence[Resource], waiter: str) -> Admission:
        now = time.monotonic()
        with self._lock:
            if len(self._limits) >= self._sweep_at:  # forget the key values no run uses now
                self._limits = {n: s for n, s in self._limits.items() if not s.idle(now)}
                self._sweep_at = max(1024, 2 * len(self._limits))
            limits = [self._limits.setdefault(r.name, _Limit(r.seconds)) for r in resources]
            self._prune(resources, limits, waiter, now)
            waits = [self._wait(r, s, waiter, now) for r, s in zip(resources, limits)]
            wait = max(waits)
            if wait > 0:
                _refuse_waiting_for_itself(resources, waits)
                for limit in limits:
                    limit.queue.setdefault(waiter, _Waiter(0.0)).due = now + wait
                return Admission(wait)
            holder = str(next(self._holders))
            for resource, limit in zip(resources, limits):
                limit.queue.pop(waiter, None)
                if resource.kind == "c":
                    limit.held.add(holder)
                else:
                    limit.starts.append(now)
        names = tuple(r.name for r in resources if r.kind == "c")
        if not names:
            return ADMITTED
        token = _HELD.set(_HELD.get() + names)
        return Admission(release=lambda: self._release(holder, limits, token))

    def _prune(
        self, resources: Sequence[Resource], limits: list[_Limit], waiter: str, now: float
    ) -> None:
        for resource, limit in zip(resources, limits):
            while limit.starts and limit.starts[0] <= now - resource.seconds:
                limit.starts.popleft()
            for late in [w for w, s in limit.queue.items() if s.due + self.grace < now]:
                del limit.queue[late]
        present = sum(waiter in limit.queue for limit in limits)
        if 0 < present < len(limits):  # dropped from one queue: rejoin them all at the back
            for limit in limits:
                limit.queue.pop(waiter, None)

    def _wait(self, resource: Resource, limit: _Limit, waiter: str, now: float) -> float:
        free = resource.limit - limit.used(resource)
        ahead = live = 0
        for name, other in limit.queue.items():
            if name == waiter or live >= free:
                break
            ahead += 1
            live += other.due + self.slack >= now and other.due <= now + 2 * self.poll
        if live < free:
            return 0.0
        names = list(limit.queue)
        ahead = names.index(waiter) if waiter in limit.queue else len(names)
        if resource.kind == "c" or not limit.starts:
            return min(self.max_poll, self.poll * max(1, ahead - max(free, 0) + 1 - resource.limit))
        start = limit.starts[min(max(ahead - free, 0), len(limit.starts) - 1)]
        return max(start + resource.seconds - now, 1e-3)

    def _release(
        self, holder: str, limits: list[_Limit], token: contextvars.Token[tuple[str, ...]]
    ) -> None:
        with self._lock:
            for limit in limits:
                limit.held.discard(holder)
        try:
            _HELD.reset(token)
        except ValueError:  # released from another context: nothing of ours to undo there
            pass


def _refuse_waiting_for_itself(resources: Sequence[Resource], waits: list[float]) -> None:
    held = _HELD.get()
    for resource, wait in zip(resources, waits):
        if wait > 0 and resource.kind == "c" and held.count(resource.name) >= resource.limit:
            job_name = resource.name[1 : resource.name.index("}")]
            raise DispatchError(
                job_name,
                "the inline runs dispatching it hold every concurrency slot it waits for, so it "
                "would wait for itself (on a durable backend it would wait for them to end)",
            )
