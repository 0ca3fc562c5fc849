"""Shared fixtures: one private redis-server for the whole test session (started on demand),
the databases of the outbox tests (SQLite, and a PostgreSQL the tests bring themselves), and
one private RabbitMQ node for the session (started by the first test that asks for it).

Also the soak's option: the short soak (1,000 jobs per backend) runs with the suite; the full one
(10,000 per backend, marker `soak_full`) only with `pytest -m soak_full --run-soak-full`, and the
kill and restart runs (marker `reliability_runs`) only with `--run-reliability-runs`.

And the order the suite runs in, over pytest-xdist's workers (`-n 6`, set in pyproject.toml):
the slowest tests first (`SLOWEST_FIRST`), so that none starts last and holds the run up alone,
each worker taking the next test as it frees up, and tests that share a costly fixture on one
worker (`ONE_WORKER_GROUPS`, `pytest_xdist_make_scheduler`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-soak-full",
        action="store_true",
        default=False,
        help="run the full soak, 10,000 jobs per backend (select it with -m soak_full)",
    )
    parser.addoption(
        "--run-reliability-runs",
        action="store_true",
        default=False,
        help="run the kill and restart runs of tests/soak/reliability_runs.py (2,000 jobs each)",
    )


SLOWEST_FIRST: list[tuple[str, float]] = [
    # (node id prefix, seconds it takes on the 2-core machine, roughly), slowest first
    ("tests/test_benchmarks.py", 80.0),  # a module fixture runs every benchmark once
    ("tests/celery/test_durability.py::test_C21_broker_restart_workers_reconnect", 32.0),
    ("tests/steps/test_kill.py", 30.0),
    ("tests/newuser/test_newuser_readme_cli.py", 30.0),
    ("tests/celery/test_rabbitmq.py::test_a_message_that_kills_its_worker_every_time", 28.0),
    ("tests/celery/test_durability.py::test_C20_sigkilled_workers_lose_no_job", 27.0),
    ("tests/django_project/test_django.py::test_relay_killed_between_send_and_mark", 25.0),
    ("tests/celery/test_durability.py::test_C20_a_killed_workers_jobs_come_back", 24.0),
    ("tests/soak/test_soak.py::test_soak_short[celery]", 22.0),
    ("tests/soak/test_soak.py", 16.0),
    ("tests/celery/test_rabbitmq.py", 12.0),
    ("tests/dramatiq/test_durability.py::test_C2", 11.0),
    ("tests/celery/test_durability.py", 10.0),
    ("tests/schedules/test_replicas.py", 10.0),
    ("tests/django_project/test_django.py", 9.0),
    ("tests/outbox/test_relay_killed_before_publish.py", 9.0),
    ("tests/celery/test_reliable_redis.py::test_no_sweep_until_live_consumers", 8.0),
    ("tests/inngest/test_server_rules.py::test_a_burst_over_the_rate_limit", 7.0),
    ("tests/outbox/test_end_to_end.py", 6.0),
    ("tests/conformance/test_flow_control.py", 5.0),
    ("tests/inngest/test_failure_net.py", 5.0),
    ("tests/outbox/test_outbox.py::test_relay_command", 4.0),
    ("tests/test_typing.py", 4.0),
    ("tests/celery/test_reliable_redis.py", 3.0),
    ("tests/steps/", 3.0),
    ("tests/poison/test_poison.py", 2.0),
    ("tests/dramatiq/test_worker_cli.py", 2.0),
    ("tests/celery/test_worker_command.py", 2.0),
    ("tests/test_secrets.py", 2.0),
    ("tests/conformance/test_running.py::test_C15", 2.0),
    ("tests/conformance/test_running.py::test_C11", 2.0),
]
"""Where a test starts in the run: the first prefix of its node id here gives its rough
duration, and the suite starts with the longest (the others keep their order after them). With
xdist's workers each taking the next test as it frees up, the run ends when the last short
tests do, not with a 30 s test started at the end. Off by a few seconds is fine."""


def _expected_seconds(nodeid: str) -> float:
    return next((seconds for prefix, seconds in SLOWEST_FIRST if nodeid.startswith(prefix)), 0.0)


ONE_WORKER_GROUPS: list[tuple[re.Pattern[str], str]] = [
    # the benchmark run of tests/test_benchmarks.py, a module fixture (a minute or more)
    (re.compile(r"tests/test_benchmarks\.py::"), "benchmarks"),
    # the two worker processes per backend of the conformance flow tests (`flow_run`)
    (
        re.compile(
            r"tests/conformance/test_flow_control\.py::"
            r"test_C2[56]_(at_most|each_key|throttle_is)\w*\[(?P<harness>[\w-]+)\]"
        ),
        "flow-{harness}",
    ),
    # the session's private RabbitMQ node (the `rabbitmq` fixture: 5 to 7 s to boot)
    (
        re.compile(
            r"tests/(celery|dramatiq)/test_amqp\.py::"
            r"|tests/celery/test_rabbitmq\.py::(?!test_every_receipt_runs_after_a_hard_kill)"
            r"|tests/outbox/test_relay_killed_before_publish\.py::"
            r"|tests/poison/test_poison\.py::.*\[celery-amqp"
        ),
        "rabbitmq",
    ),
]
"""Tests that share a costly fixture, run on one worker one after the other (each worker
would make the fixture for itself): node id pattern, and the group's name."""


def one_worker_group(nodeid: str) -> str | None:
    for pattern, name in ONE_WORKER_GROUPS:
        match = pattern.match(nodeid)
        if match:
            return name.format(**match.groupdict())
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With `-n` (and no other `--dist`): each worker takes the next test, or the next group of
    `ONE_WORKER_GROUPS`, in collection order (the slowest first), when it has two or fewer
    left: xdist's `loadscope` scheduling with these groups as its scopes. (`--dist loadgroup`
    would take groups from `xdist_group` marks, but xdist 3.8 cannot rename pytest 9's node
    ids, which is how it groups them.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SlowestFirst(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return one_worker_group(nodeid) or nodeid

    config.option.loadscopereorder = False  # keep the collection's order
    return SlowestFirst(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the on-demand runs unless asked for; then put the slowest tests first (after
    pytest's own ordering by fixture, so that it stays within each rank)."""
    on_demand = {
        "soak_full": ("--run-soak-full", "pytest -m soak_full --run-soak-full"),
        "reliability_runs": ("--run-reliability-runs", "pytest --run-reliability-runs"),
    }
    for marker, (option, command) in on_demand.items():
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"runs on demand only: {command}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
    items.sort(key=lambda item: -_expected_seconds(item.nodeid))


class SharedResources:
    """Session-wide resources for harnesses; the Redis server starts on first use."""

    def __init__(self) -> None:
        self._server: Any = None
        self._next_db = 0

    @property
    def server(self) -> Any:
        if self._server is None:
            from tests.support.redis_server import RedisServer

            self._server = RedisServer().start()
        return self._server

    def redis_url(self, db: int = 0) -> str:
        return self.server.url_for_db(db)

    @property
    def redis(self) -> Any:
        return self.server.client()

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="session")
def resources() -> Iterator[SharedResources]:
    shared = SharedResources()
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A private redis-server for one test (for tests that stop or restart it)."""
    from tests.support.redis_server import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def store() -> Iterator[Any]:
    """A second private redis-server, apart from the broker, where the jobs of a worker test
    record their runs: stopping or restarting the broker keeps the record."""
    from tests.support.redis_server import RedisServer

    with RedisServer() as server:
        yield server


# -- databases (the outbox): SQLite always, PostgreSQL from tests/support/postgres_server.py ------
# Without a PostgreSQL the PostgreSQL cases skip, saying why, except in CI (`CI=true`), where
# they fail: CI must run them.

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    from tests.support.postgres_server import Postgres, PostgresUnavailable

    try:
        pg = Postgres()
    except PostgresUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the PostgreSQL tests: {exc}")
        pytest.skip(str(exc))
    try:
        yield pg
    finally:
        pg.close()


def _database(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.db'}"
        return
    pg = request.getfixturevalue("postgres")
    url: str = pg.new_database()
    try:
        yield url
    finally:
        pg.drop_database(url)


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, then a PostgreSQL database."""
    yield from _database(request.param, tmp_path, request)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty PostgreSQL database."""
    yield from _database("postgresql", tmp_path, request)


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[Any]:
    """A private RabbitMQ node (its own ports, data and cookie) for the session's AMQP tests."""
    from tests.support.rabbitmq_server import RabbitMQServer

    with RabbitMQServer() as server:
        yield server


# -- figures: what the durability runs measured, printed at the end of the run -----------------

FIGURE = "figure"


@pytest.fixture
def report_figure(record_property: Any) -> Any:
    """`report_figure("C20 rabbitmq: 0 lost of 1,000 ...")`: a line the run prints in its
    summary (`figures` section), also under pytest-xdist, so that CI's log shows what the
    durability runs measured and not only that they passed."""
    return lambda line: record_property(FIGURE, line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = [
        f"{report.nodeid}: {value}"
        for report in terminalreporter.stats.get("passed", [])
        for name, value in getattr(report, "user_properties", [])
        if name == FIGURE and report.when == "call"
    ]
    if lines:
        terminalreporter.section("figures")
        for line in sorted(lines):
            terminalreporter.write_line(line)
