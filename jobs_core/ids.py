"""Dispatch ids: unique across threads, processes and restarts, and cheap to make.

`str(uuid.uuid4())` costs 2.5 µs (a system call for 16 random bytes, then formatting), a sixth
of a whole dispatch. An id here is 20 hex digits (80 bits) drawn from `os.urandom` when the
process starts, again in every forked child, then a counter of 12 hex digits or more: two
processes share a prefix with a chance of about n² / 2**81 for n processes.
"""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter = itertools.count()


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(10).hex()
    _counter = itertools.count()


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_dispatch_id() -> str:
    """A new id (32 hex digits, like `uuid4().hex`) no other dispatch anywhere has."""
    return f"{_prefix}{next(_counter):012x}"
