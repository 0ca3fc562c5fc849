"""C23 on Celery and Dramatiq: the broker password appears in no log, repr or error message.

A private redis-server with `requirepass`; for each backend a dispatcher and a worker with the
password in their broker URL, one job that completes and one that gives up; then dispatches
that fail (a wrong password, and an unreachable broker). Captured and searched for the
password: every log record on the root logger at DEBUG (message, arguments and traceback), the
text of every exception (with its causes), the reprs and strings of the dispatchers, the
settings and the worker-side broker or app, the instrumentation events, and the output of the
`python -m jobs_core worker` command (which prints the broker URL in its banner).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from pydantic import BaseModel

from jobs_core import DispatchError, JobRegistry, JobsSettings, Retry
from jobs_core.testing import RecordingInstrumentation
from tests.celery.workers import wait_for
from tests.support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.timeout(120)

PASSWORD = "c23-Brok3rPassw0rd-x9"
WRONG = "c23-Wr0ngPassw0rd-y7"
SECRETS = (PASSWORD, WRONG)


class Note(BaseModel):
    text: str


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD) as redis_server:
        yield redis_server


def _registry(done: list[str]) -> JobRegistry[Any]:
    jobs = JobRegistry[Any]()

    def ok(payload: Note, ctx: Any) -> None:
        done.append(payload.text)

    def broken(payload: Note, ctx: Any) -> None:
        raise RuntimeError(f"broken job: {payload.text}")

    def gave_up(error: BaseException, payload: Any, ctx: Any) -> None:
        done.append(f"gave up: {payload.text}")

    jobs.define_job("c23.ok", payload=Note, handle=ok)
    jobs.define_job(
        "c23.broken", payload=Note, retry=Retry(attempts=0), handle=broken, on_failure=gave_up
    )
    return jobs


def _url(server: RedisServer, password: str | None, port: int | None = None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port or server.port}/0"


class _Start(NamedTuple):
    done: list[str]
    jobs: JobRegistry[Any]
    events: RecordingInstrumentation
    url: str
    texts: dict[str, str]


def _start(backend: str, server: RedisServer, caplog: pytest.LogCaptureFixture) -> _Start:
    """What each backend's test starts from: DEBUG logs captured, the two jobs (and the list
    they report to), the events, the broker URL with the password, and the texts to search,
    first the settings' repr and str."""
    caplog.set_level(logging.DEBUG)
    done: list[str] = []
    url = _url(server, PASSWORD)
    settings = JobsSettings(backend=backend, broker_url=url, queue="c23")
    texts = {"settings": f"{settings!r} {settings}"}
    return _Start(done, _registry(done), RecordingInstrumentation(), url, texts)


def _dispatch_both(dispatcher: Any, jobs: JobRegistry[Any], done: list[str]) -> None:
    """Dispatch the job that completes and the one that gives up; wait until both report."""
    dispatcher.dispatch_sync(jobs["c23.ok"], {"text": "fine"})
    dispatcher.dispatch_sync(jobs["c23.broken"], {"text": "bad"})
    wait_for(lambda: len(done) == 2, 30, "both jobs to finish", lambda: str(done))


def _exception_text(error: BaseException) -> str:
    """str, repr and the whole formatted chain (causes and contexts) of `error`."""
    chain = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return f"{error}\n{error!r}\n{chain}"


def _record_text(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.args), record.exc_text or ""]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append(_exception_text(record.exc_info[1]))
    return "\n".join(parts)


def _assert_no_secret(texts: dict[str, str]) -> None:
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"the broker password appears in {where}: {text[:2000]}"


def _failing_dispatches(make: Any, job: Any, server: RedisServer) -> dict[str, str]:
    """Dispatch with a wrong password and to an unreachable broker: both are DispatchErrors."""
    texts: dict[str, str] = {}
    for label, url in (
        ("wrong password", _url(server, WRONG)),
        ("unreachable", _url(server, PASSWORD, port=free_port())),
    ):
        dispatcher = make(url)
        try:
            texts[f"repr of the {label} dispatcher"] = f"{dispatcher!r} {dispatcher}"
            with pytest.raises(DispatchError) as caught:
                dispatcher.dispatch_sync(job, {"text": label})
            texts[f"the {label} error"] = _exception_text(caught.value)
            assert "c23.ok" in str(caught.value), "the error names the job"
        finally:
            dispatcher.close()
    return texts


def _check_failures_and_logs(
    caplog: pytest.LogCaptureFixture,
    texts: dict[str, str],
    events: RecordingInstrumentation,
    make: Any,
    job: Any,
    server: RedisServer,
) -> None:
    """The failing dispatches' texts and events join `texts`; each failure was recorded."""
    texts.update(_failing_dispatches(make, job, server))
    texts["events"] = "\n".join(repr(e) for e in events)
    schedule_failures = [e for e in events if e.kind == "failed" and e.phase == "schedule"]
    assert len(schedule_failures) == 2 and all(e.error for e in schedule_failures)


def _check_logs(caplog: pytest.LogCaptureFixture, texts: dict[str, str]) -> None:
    assert caplog.records, "logging was captured"
    for i, record in enumerate(caplog.records):
        texts[f"log record {i} ({record.name}, {record.levelname})"] = _record_text(record)
    texts["caplog text"] = caplog.text
    _assert_no_secret(texts)


def test_C23_celery_broker_password_never_shown(
    server: RedisServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from celery import signals
    from celery.contrib.testing.worker import start_worker

    from jobs_core.backends.celery import CeleryDispatcher
    from tests.celery.embedded import embedded_worker_app

    done, jobs, events, url, texts = _start("celery", server, caplog)
    app = embedded_worker_app(jobs, url, "c23", events)
    dispatcher = CeleryDispatcher(url, "c23", instrumentation=events)
    try:
        texts["dispatcher"] = f"{dispatcher!r} {dispatcher}"
        texts["worker app"] = f"{app!r} {app}"
        with start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="DEBUG"
        ):
            _dispatch_both(dispatcher, jobs, done)
        assert sorted(done) == ["fine", "gave up: bad"]
    finally:
        signals.task_unknown.disconnect(app.jobs_core_unknown_receiver)
        signals.task_rejected.disconnect(app.jobs_core_rejected_receiver)
        app.close()
        dispatcher.close()
    make = partial(CeleryDispatcher, queue="c23", timeout=1.0, instrumentation=events)
    _check_failures_and_logs(caplog, texts, events, make, jobs["c23.ok"], server)
    texts["worker CLI output"] = _celery_cli_output(server, url, tmp_path)
    _check_logs(caplog, texts)


def _celery_cli_output(server: RedisServer, url: str, log_dir: Path) -> str:
    """`python -m jobs_core worker` (Celery) with the password in JOBS_BROKER_URL: its banner
    shows the broker URL; run one job, stop it, return what it printed."""
    from jobs_core.backends.celery import CeleryDispatcher
    from tests.celery.app import DONE, work
    from tests.celery.workers import worker_processes

    store = server.client()
    with worker_processes(url, url, "c23cli", log_dir) as w:
        w.env["PYTHONUNBUFFERED"] = "1"
        w.start_jobs_core_worker("--pool", "threads", "--concurrency", "1", "--loglevel", "DEBUG")
        dispatcher = CeleryDispatcher(url, "c23cli")
        try:
            dispatcher.dispatch_sync(work, {"n": 23})
            wait_for(lambda: store.sismember(DONE, 23) == 1, 60, "the CLI worker's job", w.logs)
        finally:
            dispatcher.close()
        w.stop_all()
        output = "\n".join(p.read_text(errors="replace") for p in log_dir.glob("worker-*.log"))
    assert "127.0.0.1" in output, "the banner shows the broker"
    return output


def test_C23_dramatiq_broker_password_never_shown(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    import dramatiq

    from jobs_core.backends.dramatiq import (
        DramatiqDispatcher,
        close_broker,
        make_worker_broker,
        register_actors,
    )

    done, jobs, events, url, texts = _start("dramatiq", server, caplog)
    broker = make_worker_broker(url)
    register_actors(jobs, context=None, broker=broker, instrumentation=events, queue="c23")
    dispatcher = DramatiqDispatcher(url, "c23", instrumentation=events)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    try:
        texts["dispatcher"] = f"{dispatcher!r} {dispatcher}"
        texts["worker broker"] = f"{broker!r} {broker}"
        worker.start()
        try:
            _dispatch_both(dispatcher, jobs, done)
        finally:
            worker.stop(timeout=10_000)
        assert sorted(done) == ["fine", "gave up: bad"]
    finally:
        close_broker(broker)
        dispatcher.close()
    make = partial(DramatiqDispatcher, queue="c23", timeout=1.0, instrumentation=events)
    _check_failures_and_logs(caplog, texts, events, make, jobs["c23.ok"], server)
    texts["worker CLI output"] = _dramatiq_cli_output(server, url)
    _check_logs(caplog, texts)


def _dramatiq_cli_output(server: RedisServer, url: str) -> str:
    """`python -m jobs_core worker` (Dramatiq) with the password in JOBS_BROKER_URL: it logs
    the broker URL as it starts; run one job, stop it, return what it printed."""
    from jobs_core.backends.dramatiq import DramatiqDispatcher
    from tests.dramatiq.app import DONE, work
    from tests.dramatiq.workers import worker_processes

    store = server.client()
    with worker_processes(url, url, "c23cli") as w:
        proc = w.start_jobs_core_worker("--threads", "1")
        dispatcher = DramatiqDispatcher(url, "c23cli")
        try:
            dispatcher.dispatch_sync(work, {"n": 23, "seconds": 0})
            wait_for(
                lambda: store.sismember(DONE, 23) == 1,
                60,
                "the CLI worker's job",
                lambda: w.output(proc),
            )
        finally:
            dispatcher.close()
        assert w.terminate(proc) == 0
        output = w.output(proc)
    assert "127.0.0.1" in output, "the worker logs which broker it uses"
    return output
