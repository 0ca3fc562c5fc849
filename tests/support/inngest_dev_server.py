"""The real Inngest Dev Server, where its binary is on PATH (`inngest`, or `inngest-cli` from
npm: `npm i -g inngest-cli`, or `npx --yes inngest-cli@latest` in a user's CI with Node).

It is started bound to 127.0.0.1 with a free port for every listener (the API and the connect
gateway and its two gRPC ports, which default to 8288, 8289, 50052 and 50053 on all
interfaces), without app discovery or polling, and stopped on exit. The flags come from the
server's own CLI (cmd/devserver in inngest/inngest); those an older binary lacks are left out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.processes import stop_process
from tests.support.redis_server import free_port

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 60.0
NO_BINARY = "real Inngest Dev Server: no `inngest`/`inngest-cli` on PATH (npm i -g inngest-cli)"


def find_dev_server_binary() -> str | None:
    """The Dev Server's binary on PATH, or None."""
    return shutil.which("inngest") or shutil.which("inngest-cli")


class DevServer:
    """`inngest dev` on loopback ports of its own; `url` is its API and Event API origin."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="inngest-dev-")
        self._log = Path(self._dir.name) / "dev-server.log"
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """`inngest dev` with every listener on loopback and a free port."""
        supported = subprocess.run(
            [self.binary, "dev", "--help"], capture_output=True, text=True, timeout=60
        )
        help_text = supported.stdout + supported.stderr
        wanted = {
            "--host": LOOPBACK,
            "--port": str(self.port),
            "--connect-gateway-port": str(free_port()),
            "--connect-gateway-grpc-port": str(free_port()),
            "--connect-executor-grpc-port": str(free_port()),
            "--connect-gateway-grpc-ip": LOOPBACK,
            "--connect-executor-grpc-ip": LOOPBACK,
        }
        command = [self.binary, "dev", "--no-discovery"]
        if "--no-poll" in help_text:
            command.append("--no-poll")
        for flag, value in wanted.items():
            if flag in help_text or flag in ("--host", "--port"):
                command += [flag, value]
        return command

    def start(self) -> DevServer:
        env = {**os.environ, "DO_NOT_TRACK": "1", "INNGEST_DEV": "1"}
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir.name,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                httpx.get(self.url, timeout=1.0)
                return self
            except httpx.TransportError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    output = self.log()
                    self.stop()
                    raise RuntimeError(f"the Inngest Dev Server did not start:\n{output}") from None
                time.sleep(0.1)

    def log(self, last: int = 4000) -> str:
        """The tail of the server's output, for failure messages."""
        return self._log.read_text(errors="replace")[-last:] if self._log.exists() else ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)
        self._dir.cleanup()

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
