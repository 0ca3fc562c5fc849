"""The retry policy every backend applies, and its backoff schedule (contract clause C15)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

from ..errors import JobConfigError

MAX_ATTEMPTS = 20


@dataclass(frozen=True, slots=True)
class Retry:
    """How often and how patiently a failing job is run again.

    `attempts` counts retries *after* the first run, exactly like Inngest's `retries`: a job runs
    at most `attempts + 1` times on every backend. The wait before retry k (1-based) is
    `min(max_backoff, min_backoff * 2**(k-1))`, reduced by up to 50% when `jitter` is on.
    """

    attempts: int = 4
    min_backoff: timedelta = field(default_factory=lambda: timedelta(seconds=1))
    max_backoff: timedelta = field(default_factory=lambda: timedelta(hours=1))
    jitter: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise JobConfigError(
                f"Retry.attempts must be an int in 0..{MAX_ATTEMPTS}, got {self.attempts!r}"
            )
        if not 0 <= self.attempts <= MAX_ATTEMPTS:
            raise JobConfigError(
                f"Retry.attempts must be in 0..{MAX_ATTEMPTS} (retries after the first run), "
                f"got {self.attempts}"
            )
        for name in ("min_backoff", "max_backoff"):
            value = getattr(self, name)
            if not isinstance(value, timedelta):
                raise JobConfigError(f"Retry.{name} must be a timedelta, got {value!r}")
            if value < timedelta(0):
                raise JobConfigError(f"Retry.{name} must not be negative, got {value}")
        if self.min_backoff > self.max_backoff:
            raise JobConfigError(
                f"Retry.min_backoff ({self.min_backoff}) must be <= max_backoff ({self.max_backoff})"
            )

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> timedelta:
        """The wait before retry `retry_number` (1 for the first retry), jitter applied."""
        base = self.base_backoff(retry_number)
        if not self.jitter or base <= timedelta(0):
            return base
        factor = 1.0 - 0.5 * (rng or random).random()
        return base * factor

    def base_backoff(self, retry_number: int) -> timedelta:
        """The wait before retry `retry_number` without jitter (the schedule's upper bound)."""
        if retry_number < 1:
            raise ValueError(f"retry numbers start at 1, got {retry_number}")
        # Cap the exponent: 2**k grows past any timedelta long before k reaches 64.
        exponent = min(retry_number - 1, 62)
        min_s = self.min_backoff.total_seconds()
        max_s = self.max_backoff.total_seconds()
        return timedelta(seconds=min(max_s, min_s * (2**exponent)))
