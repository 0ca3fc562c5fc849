"""A PostgreSQL server for the tests: their own, or the one `JOBS_TEST_POSTGRES_URL` names.

- `JOBS_TEST_POSTGRES_URL` set (`postgresql://user@host:port/db`): each test gets a fresh
  database on that server (created, then dropped), so it needs the CREATEDB right.
- else, where the PostgreSQL server binaries are found (`JOBS_TEST_POSTGRES_BIN` alone when
  set, else `pg_config --bindir`, `/usr/lib/postgresql/*/bin`, PATH): a private server in a temp dir on
  a free loopback port, started once per test session. PostgreSQL refuses to run as root; as
  root the server runs as the `postgres` system user (else `nobody`), as a packaged one does.
- else the PostgreSQL tests skip, saying why, except in CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

from tests.support.redis_server import free_port

URL_ENV = "JOBS_TEST_POSTGRES_URL"
BIN_ENV = "JOBS_TEST_POSTGRES_BIN"


class PostgresUnavailable(RuntimeError):
    """Neither a server URL nor server binaries: the caller skips (or fails in CI)."""


def find_bindir() -> str | None:
    candidates: list[str] = []
    if os.environ.get(BIN_ENV):  # when set, the only place looked at
        bindir = os.environ[BIN_ENV]
        found = all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "postgres"))
        return bindir if found else None
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "postgres")):
            return bindir
    return None


def _admin_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _with_database(url: str, name: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


class PostgresServer:
    """A private `postgres` process owned by the test session (stop() ends it)."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="jobs-core-pg-")
        self.process: subprocess.Popen[bytes] | None = None
        self._user: tuple[int, int] | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self._user = (entry.pw_uid, entry.pw_gid)
                break
            else:
                raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run as")
            os.chown(self.dir, *self._user)
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        if self._user is not None:
            kwargs.update(user=self._user[0], group=self._user[1], extra_groups=[])
        return subprocess.Popen(args, cwd=self.dir, **kwargs)

    def start(self, timeout: float = 60.0) -> PostgresServer:
        data = os.path.join(self.dir, "data")
        log_path = os.path.join(self.dir, "initdb.log")
        with open(log_path, "wb") as log:
            if self._user is not None:
                os.chown(log_path, *self._user)
            init = self._popen(
                [
                    os.path.join(self.bindir, "initdb"),
                    "-D",
                    data,
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            if init.wait(timeout) != 0:
                raise RuntimeError(f"initdb failed:\n{Path(log_path).read_text()[-3000:]}")
        server_log = os.path.join(self.dir, "postgres.log")
        self._log: IO[bytes] | None = open(server_log, "wb")  # open while the server runs
        if self._user is not None:
            os.chown(server_log, *self._user)
        self.process = self._popen(
            [
                os.path.join(self.bindir, "postgres"),
                "-D",
                data,
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                self.dir,
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                _admin_connect(self.url).close()
                return self
            except Exception:
                time.sleep(0.1)
        text = Path(server_log).read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"postgres did not start on port {self.port}:\n{text}")

    def stop(self, timeout: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()  # SIGTERM: "smart" shutdown; SIGINT would be "fast"
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres:
    """The session's PostgreSQL: `new_database()` gives a fresh empty database's URL."""

    def __init__(self) -> None:
        self.server: PostgresServer | None = None
        self._databases: list[str] = []
        url = os.environ.get(URL_ENV)
        if url:
            self.admin_url = url
            self.source = f"{URL_ENV}"
        else:
            bindir = find_bindir()
            if bindir is None:
                raise PostgresUnavailable(
                    f"no PostgreSQL: set {URL_ENV}, or install the server binaries "
                    f"(initdb, postgres; or point {BIN_ENV} at them)"
                )
            self.server = PostgresServer(bindir).start()
            self.admin_url = self.server.url
            self.source = f"private server from {bindir}"

    def new_database(self) -> str:
        """Create a fresh database; the URL uses the `postgresql+psycopg` driver."""
        name = f"jobs_core_test_{uuid.uuid4().hex[:12]}"
        with _admin_connect(self.admin_url) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        return _with_database(self.admin_url, name).replace(
            "postgresql://", "postgresql+psycopg://", 1
        )

    def drop_database(self, url: str) -> None:
        from sqlalchemy import make_url

        name = make_url(url).database
        with _admin_connect(self.admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._databases:
            self._databases.remove(name)

    def close(self) -> None:
        for name in list(self._databases):
            try:
                self.drop_database(_with_database(self.admin_url, name))
            except Exception:
                pass
        if self.server is not None:
            self.server.stop()
            self.server = None
