"""A completion counter a no-op job can afford: no lock, no round trip, readable from outside.

Each thread that counts owns one 8-byte slot of a memory map and writes its own running total
there; the benchmark reads the sum of the slots. Mapped from a file, it is shared with worker
processes (`BENCH_COUNTER` names the file); anonymous, it counts within one process. A Redis
`INCR` per job (what the benchmark used before) cost each side a round trip per job, which
hid part of the worker-side difference the worker rows are about.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from pathlib import Path

SLOTS = 256
WIDTH = 8
SIZE = (SLOTS + 1) * WIDTH  # slot 0 holds the number of slots handed out
ENV = "BENCH_COUNTER"


class SharedCounter:
    """Counts `hit()`s across threads (and processes, when mapped from a file)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = False) -> None:
        self.path = None if path is None else Path(path)
        self._fd: int | None = None
        if self.path is None:
            self._map = mmap.mmap(-1, SIZE)
        else:
            flags = os.O_RDWR | (os.O_CREAT if create else 0)
            self._fd = os.open(self.path, flags, 0o600)
            if create:
                os.ftruncate(self._fd, SIZE)
            self._map = mmap.mmap(self._fd, SIZE)
        self._local = threading.local()
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> SharedCounter:
        """The counter file named by `BENCH_COUNTER`, else an in-process counter."""
        path = os.environ.get(ENV)
        return cls(path) if path else cls()

    def hit(self) -> None:
        local = self._local
        slot = getattr(local, "slot", None)
        if slot is None:
            slot = local.slot = self._claim_slot()
            local.count = 0
        local.count += 1
        struct.pack_into("<q", self._map, slot * WIDTH, local.count)

    def total(self) -> int:
        return sum(struct.unpack_from(f"<{SLOTS}q", self._map, WIDTH))

    def _claim_slot(self) -> int:
        with self._lock:
            if self._fd is not None:
                import fcntl

                fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                (used,) = struct.unpack_from("<q", self._map, 0)
                if used >= SLOTS:
                    raise RuntimeError(f"more than {SLOTS} threads counted in one counter")
                struct.pack_into("<q", self._map, 0, used + 1)
                return int(used) + 1
            finally:
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
