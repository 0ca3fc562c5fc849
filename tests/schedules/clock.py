"""A clock that runs `speed` times faster than real time, shared by several processes.

Every process computes the same simulated time from the same real epoch, so three scheduler
processes see each tick at the same moment, as replicas on synchronised machines do, and two
simulated minutes take a few real seconds.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta


class AcceleratedClock:
    def __init__(self, start: datetime, epoch: float, speed: float) -> None:
        self.start = start
        self.epoch = epoch
        self.speed = speed

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.time() - self.epoch) * self.speed)

    def sleep_until(self, moment: datetime, stop: threading.Event) -> None:
        while not stop.is_set():
            remaining = (moment - self.now()).total_seconds() / self.speed
            if remaining <= 0:
                return
            stop.wait(remaining)

    def environment(self) -> dict[str, str]:
        """What `from_env` reads, for a child process."""
        return {
            "SCHED_TEST_START": self.start.isoformat(),
            "SCHED_TEST_EPOCH": repr(self.epoch),
            "SCHED_TEST_SPEED": repr(self.speed),
        }


def from_env() -> AcceleratedClock:
    """The `--clock tests.schedules.clock:from_env` factory of the scheduler processes."""
    return AcceleratedClock(
        datetime.fromisoformat(os.environ["SCHED_TEST_START"]),
        float(os.environ["SCHED_TEST_EPOCH"]),
        float(os.environ["SCHED_TEST_SPEED"]),
    )
