"""Child processes a test starts: stopping one (or its process group) politely, then for sure;
a server it owns."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TypeVar

_Server = TypeVar("_Server", bound="OwnedServer")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; waits for it either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def stop_group(
    process: subprocess.Popen[bytes], timeout: float = 10.0, kill_timeout: float | None = None
) -> None:
    """Stop a child started in a process group of its own (`start_new_session=True`) and all
    it started (a worker's pool, a node's helpers): SIGTERM to the group, then SIGKILL if the
    child has not exited within `timeout`, waiting `kill_timeout` (`timeout` if not given) for
    that. Nothing to do for a child that has exited."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout if kill_timeout is None else kill_timeout)


class OwnedServer:
    """A server process a test owns, its files in the temporary directory `dir`. As a context
    manager: started on entry; stopped, and its directory removed, on exit."""

    dir: str | Path

    def start(self: _Server) -> _Server:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Server) -> _Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
