"""A private RabbitMQ node on free loopback ports in a temporary directory, for broker tests.

It is apart from any RabbitMQ the machine runs (its own node name, AMQP and distribution ports,
data, logs, configuration and Erlang cookie), so a test may stop or restart it. Needs
`rabbitmq-server` installed (Debian: /usr/lib/rabbitmq/bin); `RABBITMQ_SCRIPTS` names another
directory holding `rabbitmq-server` and `rabbitmqctl`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.support.processes import OwnedServer, stop_group
from tests.support.redis_server import free_port

SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin", "/opt/rabbitmq/sbin")


def find_rabbitmq_scripts() -> Path:
    """The directory with `rabbitmq-server` and `rabbitmqctl` (not the root-only wrappers)."""
    candidates = [os.environ.get("RABBITMQ_SCRIPTS", ""), *SCRIPT_DIRS]
    for candidate in candidates:
        if candidate and (Path(candidate) / "rabbitmq-server").is_file():
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    if found:
        return Path(found).parent
    raise RuntimeError(
        "no rabbitmq-server found: install RabbitMQ (Debian: apt-get install rabbitmq-server) "
        "or set RABBITMQ_SCRIPTS to the directory holding rabbitmq-server and rabbitmqctl"
    )


class RabbitMQServer(OwnedServer):
    """One RabbitMQ node owned by the tests; stop() (or the context manager) ends it."""

    def __init__(self, consumer_timeout_ms: int | None = None) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"jobs-core-{uuid.uuid4().hex[:8]}@localhost"
        self.dir: Path = Path(tempfile.mkdtemp(prefix="jobs-core-rabbitmq-"))
        self.consumer_timeout_ms = consumer_timeout_ms
        self.scripts = find_rabbitmq_scripts()
        self.process: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def env(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "HOME": str(d),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def _write_config(self) -> None:
        lines = [f"listeners.tcp.default = 127.0.0.1:{self.port}"]
        if self.consumer_timeout_ms is not None:
            lines.append(f"consumer_timeout = {self.consumer_timeout_ms}")
        (self.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return bool(sock.recv(1))
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> RabbitMQServer:
        self._write_config()
        log = open(self.dir / "server.out", "ab")
        self.process = subprocess.Popen(
            [str(self.scripts / "rabbitmq-server")],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self._answers():
                return self
            time.sleep(0.1)
        text = (self.dir / "server.out").read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"RabbitMQ node {self.node} did not start:\n{text[-3000:]}")

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        result = subprocess.run(
            [str(self.scripts / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        return result.stdout.decode(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node (its process group: the Erlang VM and epmd helpers it started)."""
        process, self.process = self.process, None
        if process is not None:
            stop_group(process, timeout)

    def kill(self) -> None:
        """SIGKILL the node (its whole process group), as a crash would: nothing is flushed."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        process.wait(30)

    def ready(self, queue: str) -> int:
        """Messages waiting in `queue` now (a passive declare: the queue's own count)."""
        from kombu import Connection

        with Connection(self.url) as connection:
            _, count, _ = connection.default_channel.queue_declare(queue, passive=True)
        return int(count)

    def queue_counts(self, queue: str) -> tuple[int, int]:
        """(ready, unacknowledged) messages of `queue`, as the node's statistics say (a quorum
        queue's are refreshed every few seconds: poll them with a deadline)."""
        out = self.ctl(
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        )
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == queue:
                return int(parts[1]), int(parts[2])
        return 0, 0

    def restart(self) -> None:
        """Stop and start again on the same ports and data (durable queues survive)."""
        self.stop()
        self.start()

    def __repr__(self) -> str:
        return f"RabbitMQServer(node={self.node!r}, port={self.port})"
