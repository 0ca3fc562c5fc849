"""Items written straight into Dramatiq's Redis layout that Dramatiq itself cannot settle (issue 18).

Dramatiq keeps a queue as a list of ids (`dramatiq:<queue>`) and a hash of bodies
(`dramatiq:<queue>.msgs`); a worker's fetch script moves ids into its acks set
(`dramatiq:__acks__.<worker>.<queue>`) and an ack removes the id named in the body's
`options.redis_message_id`. Each case below writes one item by hand, then good jobs behind it
and after it, and runs a real worker (in this process, on a private redis-server):

- `no-body`, `no-body-delayed`: an id on the queue (or the delay queue) with no body. Upstream
  the fetch returns nothing for it, logs an unnamed warning, and the id stays in the acks set;
- `options-null`, `message-id-list`: a field of the wrong type. Upstream the consumer thread
  crashes on it, restarts, and crashes again, forever;
- `other-queue`: a body naming another queue. Upstream the worker thread that ran it dies
  (`KeyError` looking up the queue's consumer) and the id stays in the acks set;
- `delay-queue-name`: a body on the main queue naming its delay queue: acked on the wrong set;
- `no-redis-id`, `copied-body`: a body whose `options.redis_message_id` is missing, or is
  another message's (a body copied by hand): its ack cannot find it, so it stays in the acks
  set and runs again whenever the consumer restarts or the worker dies;
- `kwargs-null`: retried by Dramatiq as a failure of the job, never reported.

For each: the worker goes on (every good job runs, every worker thread is alive), the item is
logged with its id and its queue and recorded as `failed`, it is dead-lettered with its body as
it came (an id without a body is dropped from the acks set: there is nothing to keep), it runs
no more than once (`copied-body` runs once, before an idle sweep settles it), and nothing is
left in any acks set.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from jobs_core import JobRegistry, Retry
from jobs_core.testing import RecordingInstrumentation
from tests.celery.workers import wait_for
from tests.poison.test_poison import JOB, DramatiqBackend, Note

pytestmark = pytest.mark.timeout(60)

COPIED = "0b8e7f43-59d6-4c1e-9d0e-4f2a34b9c1aa"
"""The ids of the message whose body `copied-body` copies."""


@dataclass(frozen=True)
class Case:
    body: dict[str, Any] | None  # changes to a well-formed body; None: no body at all
    delayed: bool = False
    runs: int = 0  # how often the item itself runs


CASES = {
    "no-body": Case(None),
    "no-body-delayed": Case(None, delayed=True),
    "options-null": Case({"options": None}),
    "message-id-list": Case({"message_id": ["not", "hashable"]}),
    "other-queue": Case({"queue_name": "elsewhere"}),
    "delay-queue-name": Case({"queue_name": "{queue}.DQ"}),
    "no-redis-id": Case({"options": {}}),
    "copied-body": Case(
        {"options": {"redis_message_id": COPIED}, "message_id": COPIED, "args": [{"text": "copy"}]},
        runs=1,
    ),
    "kwargs-null": Case({"kwargs": None}),
}


class Worker(DramatiqBackend):
    """tests/poison's in-process Dramatiq worker, with a job that records what it ran and a
    short idle sweep."""

    def __init__(self, url: str) -> None:
        self.ran: list[str] = []
        self.events = RecordingInstrumentation()
        jobs = JobRegistry[Any]()
        jobs.define_job(
            JOB, payload=Note, retry=Retry(attempts=1), handle=lambda p, c: self.ran.append(p.text)
        )
        super().__init__(url, jobs, self.events)
        self.broker.idle_sweep_seconds = 0.5
        self.written = b""

    def write(self, case: Case) -> str:
        """Write the case's item by hand; return the id it is queued under."""
        redis_id = str(uuid.uuid4())
        queue = f"{self.queue}.DQ" if case.delayed else self.queue
        if case.body is not None:
            body: dict[str, Any] = {
                "queue_name": self.queue,
                "actor_name": JOB,
                "args": [{"text": "poison"}],
                "kwargs": {},
                "options": {"redis_message_id": redis_id},
                "message_id": redis_id,
                "message_timestamp": int(time.time() * 1000),
            }
            for key, value in case.body.items():
                body[key] = value.format(queue=self.queue) if isinstance(value, str) else value
            self.written = json.dumps(body).encode()
            self.client.hset(f"dramatiq:{queue}.msgs", redis_id, self.written)
        self.client.rpush(f"dramatiq:{queue}", redis_id)
        return redis_id

    def acks(self) -> set[str]:
        return {
            member.decode()
            for key in self.client.scan_iter(f"dramatiq:__acks__.*.{self.queue}*")
            for member in self.client.smembers(key)
        }


def _worker_threads_alive() -> int:
    from dramatiq.worker import WorkerThread

    return sum(isinstance(t, WorkerThread) and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("name", list(CASES))
def test_hand_written_item_is_reported_settled_and_skipped(
    name: str, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    case = CASES[name]
    caplog.set_level(logging.INFO)
    w = Worker(redis_server.url)
    try:
        redis_id = w.write(case)
        for text in ("before-1", "before-2", "before-3"):  # in the item's fetched batch
            w.dispatcher.dispatch_sync(w.job, {"text": text})
        with w.worker():
            w.dispatcher.dispatch_sync(w.job, {"text": "after"})
            good = {"before-1", "before-2", "before-3", "after"}

            def settled() -> bool:
                reported = any(e.dispatch_id == redis_id for e in w.events.events)
                return good <= set(w.ran) and reported and not w.acks()

            wait_for(
                settled,
                20,
                f"{name}: the good jobs to run, the item to be reported and no id left in acks",
                lambda: f"ran={w.ran} acks={w.acks()} events={w.events.events[-3:]}",
            )
            assert _worker_threads_alive() == 2, "a worker thread died"
        assert sorted(t for t in w.ran if t not in ("poison", "copy")) == sorted(good)
        assert w.ran.count("poison") + w.ran.count("copy") == case.runs

        failed = [e for e in w.events.events if e.dispatch_id == redis_id]
        assert [(e.kind, e.phase) for e in failed] == [("failed", "execute")]
        assert failed[0].error and failed[0].error.startswith("MalformedMessage")
        queue = f"{w.queue}.DQ" if case.delayed else w.queue
        named = [
            r
            for r in caplog.records
            if r.levelno >= logging.ERROR and redis_id in r.getMessage() and queue in r.getMessage()
        ]
        assert named, "no error log line names the item's id and its queue"

        dead = w.dead_letter_bodies()
        if case.body is None:
            assert dead == {}, "an id without a body has nothing to keep"
        else:
            assert set(dead) == {redis_id}
            assert dead[redis_id] == w.written, "kept as it came"
        assert not [r for r in caplog.records if "Found 'None' message" in r.getMessage()]
    finally:
        w.close()
