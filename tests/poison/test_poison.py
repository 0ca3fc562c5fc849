"""Poison messages (issue 7): put on the broker by hand, bypassing dispatch, on Celery and Dramatiq.

Each case puts one bad message on the queue, then three good jobs behind it (so that, on
Dramatiq, they share its prefetched batch), then starts a real worker (in this process, on a
private redis-server) and sends one more good job. For every case and backend:

- the bad message is logged with what finds it again (its message / task id, and the job name
  where the message carries one);
- it is kept where an operator finds it: the dead-letter queue (Celery `<queue>.dead`,
  Dramatiq `dramatiq:<queue>.XQ`), or for a known job with bad input, the job's `on_failure`
  (once, with a `JobPayloadError`), a `failed` event and, on Dramatiq, the XQ too (on Celery
  the task ends as FAILURE: results are not stored, so the log and the hook are the record);
- the worker neither stops nor stalls: the good jobs before and after it all complete;
- no log record carries the 10 MB payload.

Cases: `not-json` (a body that is not JSON), `wrong-shape` (JSON, but not a message of the
library's shape), `wrong-args` (a message with two arguments instead of the payload),
`invalid-payload` (a payload that fails validation), `unknown-name` (a job name the worker does
not know), `ten-mb` (a 10 MB payload that does not fit the model) and `ten-mb-fits` (a 10 MB
payload that fits: dispatch refuses it, but a worker runs it; there is no size limit at the
worker).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from jobs_core import JobPayloadError, JobRegistry, Retry
from jobs_core.testing import RecordingInstrumentation
from tests.celery.workers import wait_for

pytestmark = pytest.mark.timeout(120)

JOB = "poison.note"
UNKNOWN = "poison.nobody"
TEN_MB = 10 * 1024 * 1024
MAX_LOG_CHARS = 20_000
"""No log record (message and traceback) may come near the size of the 10 MB payload."""


class Note(BaseModel):
    text: str


@dataclass
class Case:
    name: str
    # what the worker must do with it
    kept_in_dead_letters: bool
    on_failure: bool
    runs: bool = False


CASES = {
    "not-json": Case("not-json", kept_in_dead_letters=True, on_failure=False),
    "wrong-shape": Case("wrong-shape", kept_in_dead_letters=True, on_failure=False),
    "wrong-args": Case("wrong-args", kept_in_dead_letters=True, on_failure=True),
    "invalid-payload": Case("invalid-payload", kept_in_dead_letters=True, on_failure=True),
    "unknown-name": Case("unknown-name", kept_in_dead_letters=True, on_failure=False),
    "ten-mb": Case("ten-mb", kept_in_dead_letters=True, on_failure=True),
    "ten-mb-fits": Case("ten-mb-fits", kept_in_dead_letters=False, on_failure=False, runs=True),
}

GOOD_BEFORE = ("before-1", "before-2", "before-3")
GOOD_AFTER = "after"


@dataclass
class Record:
    """What the worker did: the texts it ran (long ones by length) and the `on_failure` calls."""

    ran: list[str] = field(default_factory=list)
    failures: list[tuple[BaseException, Any]] = field(default_factory=list)

    def run(self, payload: Note, ctx: Any) -> None:
        text = payload.text
        self.ran.append(text if len(text) < 100 else f"<{len(text)} chars>")

    def fail(self, error: BaseException, payload: Any, ctx: Any) -> None:
        self.failures.append((error, payload))


def make_registry(record: Record) -> JobRegistry[Any]:
    jobs = JobRegistry[Any]()
    jobs.define_job(
        JOB,
        payload=Note,
        retry=Retry(attempts=2),
        handle=record.run,
        on_failure=record.fail,
    )
    return jobs


def poison_payload(case: str) -> tuple[str, list[Any]]:
    """The job name and the argument list a hand-made message for `case` carries."""
    if case == "wrong-args":
        return JOB, [1, 2]
    if case == "invalid-payload":
        return JOB, [{"text": ["not", "a", "str"]}]
    if case == "unknown-name":
        return UNKNOWN, [{"text": "who?"}]
    if case == "ten-mb":
        return JOB, [{"text": ["x" * TEN_MB]}]
    if case == "ten-mb-fits":
        return JOB, [{"text": "x" * TEN_MB}]
    raise AssertionError(case)


# -- the two backends ---------------------------------------------------------------------


class CeleryBackend:
    """An in-process Celery worker (threads pool) made by `create_celery_app`, on Redis or AMQP."""

    name = "celery"

    def __init__(
        self,
        url: str,
        jobs: JobRegistry[Any],
        events: RecordingInstrumentation,
        transport: str = "kombu",
    ) -> None:
        from jobs_core.backends.celery import CeleryDispatcher
        from tests.celery.embedded import embedded_worker_app
        from tests.conformance.harness_celery import EMBEDDED_WORKER, PromptRedisTransport

        self.url = url
        self.queue = f"poison-{uuid.uuid4().hex[:8]}"
        prompt: dict[str, Any] = dict(EMBEDDED_WORKER)  # a stop within tens of ms, not 1 s
        if transport == "kombu" and not self.is_amqp:  # the adapter's Redis transport, too
            prompt["broker_transport"] = f"{PromptRedisTransport.__module__}:PromptRedisTransport"
        elif transport == "reliable-redis":  # its documented option: BLMOVE 0.1 s at a time
            prompt["broker_transport_options"] = {"idle_block_timeout": 0.1}
        self.app = embedded_worker_app(
            jobs,
            url,
            self.queue,
            events,
            transport=transport,
            # An in-process worker sees a stop request when its event loop next wakes up; on
            # AMQP nothing else wakes it for up to 10 s (its shutdown timeout): a heartbeat does.
            broker_heartbeat=2,
            **prompt,
        )
        self.dispatcher = CeleryDispatcher(url, self.queue)
        self.job = jobs[JOB]
        self._amqp_dead: list[tuple[dict[str, Any], bytes]] = []

    @property
    def is_amqp(self) -> bool:
        return self.url.startswith("amqp://")

    def send_poison(self, case: str) -> str:
        """Publish a hand-made Celery message (kombu, not the dispatcher); return its task id."""
        task_id = str(uuid.uuid4())
        name = JOB
        if case == "not-json":
            body: bytes = b"\x00{not json"
        elif case == "wrong-shape":
            body = json.dumps({"payload": {"text": "hi"}}).encode()
        else:
            name, args = poison_payload(case)
            body = json.dumps([args, {}, {}]).encode()
        headers = {"lang": "py", "task": name, "id": task_id, "root_id": task_id, "retries": 0}
        self.publish(body, headers)
        return task_id

    def publish(self, body: bytes, headers: dict[str, Any]) -> None:
        """Publish `body` to the job queue as it is, declared the way Celery declares it."""
        from kombu import Connection

        with Connection(self.url) as connection:
            connection.Producer().publish(
                body,
                exchange="",
                routing_key=self.queue,
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
                declare=[self.app.amqp.queues[self.queue]],
            )

    def dispatch(self, text: str) -> None:
        self.dispatcher.dispatch_sync(self.job, {"text": text})

    @contextmanager
    def worker(self) -> Iterator[None]:
        from celery.contrib.testing.worker import start_worker

        with start_worker(
            self.app,
            pool="threads",
            concurrency=2,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=10,
        ):
            yield

    def dead_letters(self) -> list[tuple[dict[str, Any], bytes]]:
        """(headers, body as it came) of each message kept in `<queue>.dead`."""
        from jobs_core.backends.celery import dead_letter_queue

        dead = dead_letter_queue(self.queue)
        if self.is_amqp:
            from kombu import Connection

            from jobs_core.backends.celery.broker import dead_letter_entity

            with Connection(self.url) as connection:
                channel = connection.default_channel
                dead_letter_entity(self.queue, self.url)(channel).declare()  # as the worker does
                while (message := channel.basic_get(dead, no_ack=True)) is not None:
                    body = message.body  # py-amqp hands a utf-8 body over as str
                    body = body.encode() if isinstance(body, str) else bytes(body)
                    self._amqp_dead.append((dict(message.headers or {}), body))
            return list(self._amqp_dead)
        client = self._client()
        try:
            raw: list[bytes] = client.lrange(dead, 0, -1)  # type: ignore[assignment]
        finally:
            client.close()
        letters = []
        for envelope in map(json.loads, raw):
            body = envelope["body"]
            if envelope["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            letters.append((envelope.get("headers") or {}, body))
        return letters

    def dead_letter_ids(self) -> set[str]:
        return {str(h["id"]) for h, _ in self.dead_letters() if h.get("id") is not None}

    def dead_letter_bodies(self) -> dict[str, bytes]:
        return {str(h["id"]): body for h, body in self.dead_letters() if h.get("id") is not None}

    def _client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=10)

    def close(self) -> None:
        from celery import signals

        signals.task_unknown.disconnect(self.app.jobs_core_unknown_receiver)
        signals.task_rejected.disconnect(self.app.jobs_core_rejected_receiver)
        self.app.close()
        self.dispatcher.close()


class DramatiqBackend:
    """An in-process `dramatiq.Worker` on a broker made by `make_worker_broker`."""

    name = "dramatiq"

    def __init__(self, url: str, jobs: JobRegistry[Any], events: RecordingInstrumentation) -> None:
        import redis

        from jobs_core.backends.dramatiq import (
            DramatiqDispatcher,
            make_worker_broker,
            register_actors,
        )
        from tests.support.names import new_queue_name

        self.url = url
        self.queue = new_queue_name("poison")
        self.broker = make_worker_broker(url)
        register_actors(
            jobs, context=None, broker=self.broker, instrumentation=events, queue=self.queue
        )
        self.dispatcher = DramatiqDispatcher(url, self.queue)
        self.client = redis.Redis.from_url(url, socket_timeout=10)
        self.job = jobs[JOB]

    def send_poison(self, case: str) -> str:
        """Write a message into Dramatiq's Redis layout by hand; return its message id."""
        message_id = str(uuid.uuid4())
        if case == "not-json":
            data = b"\x00{not json"
        elif case == "wrong-shape":
            data = json.dumps({"message_id": message_id, "payload": {"text": "hi"}}).encode()
        else:
            name, args = poison_payload(case)
            data = json.dumps(
                {
                    "queue_name": self.queue,
                    "actor_name": name,
                    "args": args,
                    "kwargs": {},
                    "options": {"redis_message_id": message_id},
                    "message_id": message_id,
                    "message_timestamp": int(time.time() * 1000),
                }
            ).encode()
        self.client.hset(f"dramatiq:{self.queue}.msgs", message_id, data)
        self.client.rpush(f"dramatiq:{self.queue}", message_id)
        return message_id

    def dispatch(self, text: str) -> None:
        self.dispatcher.dispatch_sync(self.job, {"text": text})

    @contextmanager
    def worker(self) -> Iterator[None]:
        import dramatiq

        worker = dramatiq.Worker(self.broker, worker_threads=2, worker_timeout=50)
        worker.start()
        try:
            yield
        finally:
            worker.stop(timeout=10_000)

    def dead_letter_ids(self) -> set[str]:
        from tests.support.dramatiq_dead_letters import dead_letters

        return {str(m["message_id"]) for m in dead_letters(self.url, self.queue)}

    def dead_letter_bodies(self) -> dict[str, bytes]:
        raw: dict[bytes, bytes] = self.client.hgetall(f"dramatiq:{self.queue}.XQ.msgs")  # type: ignore[assignment]
        return {k.decode(): v for k, v in raw.items()}

    def close(self) -> None:
        from jobs_core.backends.dramatiq import close_broker

        close_broker(self.broker)
        self.dispatcher.close()
        self.client.close()


Backend = CeleryBackend | DramatiqBackend
BACKENDS: dict[str, Callable[..., Backend]] = {
    "celery": CeleryBackend,
    "celery-amqp": CeleryBackend,
    "dramatiq": DramatiqBackend,
}


def broker_url(backend_name: str, request: pytest.FixtureRequest) -> str:
    """The private RabbitMQ node for `celery-amqp`, else a private redis-server."""
    fixture = "rabbitmq" if backend_name == "celery-amqp" else "redis_server"
    return str(request.getfixturevalue(fixture).url)


# -- the test -----------------------------------------------------------------------------


def _logged(caplog: pytest.LogCaptureFixture, *needles: str) -> list[logging.LogRecord]:
    """Records at WARNING or above whose message (or traceback) mentions every needle."""
    found = []
    for record in caplog.records:
        if record.levelno < logging.WARNING:
            continue
        text = record.getMessage() + (record.exc_text or "")
        if all(needle in text for needle in needles):
            found.append(record)
    return found


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend_name", list(BACKENDS))
def test_poison_message_is_logged_kept_and_skipped(
    backend_name: str, case: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    expected = CASES[case]
    is_celery = backend_name.startswith("celery")
    # On Celery a known job that gives up on bad input ends as FAILURE (no dead letter).
    expects_dead = expected.kept_in_dead_letters and not (is_celery and expected.on_failure)
    record = Record()
    events = RecordingInstrumentation()
    caplog.set_level(logging.INFO)
    backend = BACKENDS[backend_name](
        broker_url(backend_name, request), make_registry(record), events
    )
    try:
        message_id = backend.send_poison(case)
        for text in GOOD_BEFORE:  # behind it in the queue: the same prefetched batch
            backend.dispatch(text)
        with backend.worker():
            backend.dispatch(GOOD_AFTER)
            good = {*GOOD_BEFORE, GOOD_AFTER}

            def settled() -> bool:
                if not good <= set(record.ran):
                    return False
                if expects_dead and message_id not in backend.dead_letter_ids():
                    return False
                if expected.on_failure and not record.failures:
                    return False
                return not expected.runs or f"<{TEN_MB} chars>" in record.ran

            wait_for(
                settled,
                30,
                f"{backend_name}/{case}: the good jobs to run and the bad message to be kept",
                lambda: (
                    f"ran={record.ran} failures={len(record.failures)} "
                    f"dead={sorted(backend.dead_letter_ids())}"
                ),
            )
        # The worker has stopped: nothing more can happen; check what did.
        assert sorted(t for t in record.ran if not t.startswith("<")) == sorted(good)
        if expected.runs:
            assert record.ran.count(f"<{TEN_MB} chars>") == 1
        else:
            assert not [t for t in record.ran if t.startswith("<")], "the bad message ran"

        if expected.on_failure:
            assert len(record.failures) == 1, "on_failure runs once, no retry"
            error, _raw = record.failures[0]
            assert isinstance(error, JobPayloadError) and error.job_name == JOB
            kinds = events.kinds(JOB, message_id)
            assert kinds == ["started", "failed"], kinds
        else:
            assert record.failures == []

        dead = backend.dead_letter_ids()
        if expects_dead:
            assert message_id in dead
            if case == "not-json":  # kept as it came, for an operator to read
                assert backend.dead_letter_bodies()[message_id] == b"\x00{not json"
        elif is_celery and expected.on_failure:
            # A known job with bad input gives up in the core; the task ends as FAILURE.
            assert _logged(caplog, f"Task {JOB}[{message_id}]", "JobPayloadError")
        if not expects_dead:
            assert message_id not in dead
        assert dead <= {message_id}, "only the bad message is dead-lettered"

        # Logged with what finds it: the message id, and the job name where it has one.
        if case in ("not-json", "wrong-shape") and backend_name == "dramatiq":
            needles: tuple[str, ...] = (message_id,)  # undecodable: no job name to read
        elif case == "unknown-name":
            needles = (UNKNOWN, message_id)
        elif expected.runs:
            needles = ()
        else:
            needles = (JOB, message_id)
        if needles:
            assert _logged(caplog, *needles), f"no log record names {needles}"
        longest = max(
            (len(r.getMessage()) + len(r.exc_text or "") for r in caplog.records), default=0
        )
        assert longest < MAX_LOG_CHARS, f"a log record of {longest} characters"
    finally:
        backend.close()


# -- Celery: items that are not Celery messages at all ------------------------------------


def raw_item(case: str, queue: str, task_id: str) -> bytes:
    """An item written straight onto the queue's Redis list, bypassing kombu."""
    if case == "raw-not-json":
        return b"\x00{not json"
    if case == "raw-wrong-shape":  # JSON, but no kombu envelope (`properties`)
        return json.dumps({"payload": {"text": "hi"}}).encode()
    if case == "raw-bad-body":  # a kombu envelope whose base64 body does not decode
        return json.dumps(
            {
                "body": "abc",
                "content-type": "application/json",
                "content-encoding": "utf-8",
                "headers": {"lang": "py", "task": JOB, "id": task_id},
                "properties": {
                    "body_encoding": "base64",
                    "delivery_tag": task_id,
                    "delivery_info": {"exchange": "", "routing_key": queue},
                },
            }
        ).encode()
    raise AssertionError(case)


HEADERLESS_BODIES = {
    "undecodable-body": b"\x00{not json",
    "no-task-name": json.dumps({"payload": {"text": "hi"}}).encode(),
}
"""Messages with a kombu envelope but no Celery `task` header (as a foreign producer sends)."""


def _check_kept_logged_and_skipped(
    backend: CeleryBackend,
    record: Record,
    put: Callable[[], None],
    body: bytes,
    caplog: pytest.LogCaptureFixture,
    needles: tuple[str, ...],
) -> list[tuple[dict[str, Any], bytes]]:
    """Put the bad message first, three good jobs behind it, one more once the worker runs:
    every good job runs, the bad one is kept in `<queue>.dead` as it came and logged."""
    caplog.set_level(logging.INFO)
    put()
    for text in GOOD_BEFORE:
        backend.dispatch(text)
    good = {*GOOD_BEFORE, GOOD_AFTER}
    with backend.worker():
        backend.dispatch(GOOD_AFTER)
        wait_for(
            lambda: good <= set(record.ran) and any(b == body for _, b in backend.dead_letters()),
            30,
            "the good jobs to run and the bad item to be kept",
            lambda: f"ran={record.ran} dead={backend.dead_letters()}",
        )
    assert sorted(record.ran) == sorted(good), "the bad item did not run, the good ones once"
    assert record.failures == []
    kept = [(h, b) for h, b in backend.dead_letters() if b == body]
    assert len(kept) == 1 and len(backend.dead_letters()) == 1, "only the bad item, once"
    assert _logged(caplog, *needles), f"no log record names {needles}"
    return kept


@pytest.mark.parametrize("case", ["raw-not-json", "raw-wrong-shape", "raw-bad-body"])
def test_celery_raw_list_item_is_logged_kept_and_skipped(
    case: str, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The reliable Redis transport: an item on Celery's Redis list that kombu cannot read. On
    kombu's own transport it stops the worker that takes it (not JSON) or vanishes
    (`KeyError('properties')`), as docs/reliability-celery.md says (reliable_redis fix 4)."""
    record = Record()
    backend = CeleryBackend(
        redis_server.url, make_registry(record), RecordingInstrumentation(), "reliable-redis"
    )
    task_id = str(uuid.uuid4())
    item = raw_item(case, backend.queue, task_id)
    digest = hashlib.sha256(item).hexdigest()

    def put() -> None:
        client = backend._client()
        try:
            client.lpush(backend.queue, item)
        finally:
            client.close()

    # Logged with the list it was on and its digest; with the job and task id it still names.
    needles = (repr(backend.queue), digest)
    if case == "raw-bad-body":
        needles += (JOB, task_id)
    try:
        [(headers, _)] = _check_kept_logged_and_skipped(backend, record, put, item, caplog, needles)
    finally:
        backend.close()
    assert headers["jobs_core_sha256"] == digest
    assert headers["jobs_core_source"] == backend.queue
    assert headers["id"] == (task_id if case == "raw-bad-body" else f"poison-{digest[:32]}")


@pytest.mark.parametrize("case", list(HEADERLESS_BODIES))
@pytest.mark.parametrize("backend_name", ["celery", "celery-amqp"])
def test_celery_message_without_task_name_is_logged_kept_and_skipped(
    backend_name: str, case: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """A message without a `task` header: a body Celery cannot decode was acked and dropped
    before backends/celery/fixes.py (fix 1); one that decodes is rejected as unknown."""
    record = Record()
    backend = CeleryBackend(
        broker_url(backend_name, request), make_registry(record), RecordingInstrumentation()
    )
    body = HEADERLESS_BODIES[case]
    try:
        _check_kept_logged_and_skipped(
            backend,
            record,
            lambda: backend.publish(body, headers={}),
            body,
            caplog,
            (repr(backend.queue), hashlib.sha256(body).hexdigest()),
        )
    finally:
        backend.close()
