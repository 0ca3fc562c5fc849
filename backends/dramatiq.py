"""The Dramatiq backend: dispatch onto a Dramatiq broker, run jobs as Dramatiq actors.

Producer (`DramatiqDispatcher`, made by `create_dispatcher`): needs no handler code. Each job
becomes a Dramatiq message for the actor named after the job, on `JOBS_QUEUE`, with the
validated JSON payload as its one argument and the dispatch id as its message id. On Redis the
message goes through Dramatiq's own `dispatch` Lua script (the same call `actor.send` makes), so
workers see exactly what `actor.send` would have produced; `dispatch_many` writes all messages
in one MULTI/EXEC transaction (one round trip) with the same Redis writes as the script's
`enqueue` (checked against the script's text). The Redis client uses `JOBS_DISPATCH_TIMEOUT` for
connecting and for every reply, with no client-side retries, so a refused, down or hanging broker
is a `DispatchError` within the timeout (C7).

Worker (`register_actors`, `run_worker`, or the native `dramatiq module` CLI): one actor per
job, whose body hands the delivery to the core's `run_job_sync` and maps the outcome:

- retry: `raise dramatiq.Retry(delay=ms)` with the core's backoff (C11, C14, C15); the actor has
  `max_retries=job.retry.attempts` (never Dramatiq's default of 20);
- give up: the core already ran `on_failure` once and recorded `failed`; the actor raises
  `JobGaveUp`, listed in the actor's `throws=`, so Dramatiq dead-letters the message at once
  (`dramatiq:<queue>.XQ`, kept 7 days) without retrying it (C13, C16). Never `SkipMessage`;
- async handlers and context factories run on the core's per-thread event loop inside the sync
  actor, so no `AsyncIO` middleware is needed (C18);
- an unknown actor name: Dramatiq's worker logs it and dead-letters the message; our middleware
  also reports it through the core (`report_unknown_job`: logged with its name, `failed`
  recorded) and the worker goes on (C17);
- a message that cannot be decoded (not JSON, or not a Dramatiq message): Dramatiq's consumer
  raised out of its loop, restarted, and left the undecodable message and the rest of its
  prefetched batch fetched-but-unacked until the worker process died. Worker brokers made here
  use a consumer that logs it (message id, queue) and dead-letters it (`XQ`), and goes on with
  the batch;
- a message whose arguments are not the one payload (sent by hand): the actor hands them to the
  core as they are, so it is bad input (C16), not a Dramatiq retry.

Crash safety (C20): after a worker dies (SIGKILL), its unacked messages go back to the queue
only through Redis broker maintenance, which runs on a random `maintenance_chance` (per million
broker commands) once the dead worker's heartbeat is older than `heartbeat_timeout`. Dramatiq's
defaults (60 s, 0.1 %) left messages stranded for minutes on an idle queue; worker brokers made
here use `heartbeat_timeout=15 s` and `maintenance_chance=5 %` (see the constants below).
Dramatiq's `TimeLimit` middleware (600 s by default) is left out: jobs_core sets no time limit on
any backend.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timezone
from typing import TYPE_CHECKING, Any

from jobs_core.config import JobsSettings, load_settings, missing_extra, redact_url
from jobs_core.dispatcher import BaseDispatcher, PreparedJob
from jobs_core.errors import JobConfigError
from jobs_core.execution import ContextSource, report_unknown_job, run_job_sync
from jobs_core.idempotency import IdempotencyStore, MemoryIdempotencyStore, RedisIdempotencyStore
from jobs_core.instrumentation import Instrumentation, with_logging
from jobs_core.job import Job, JobRegistry

try:
    import dramatiq
    import redis
    from dramatiq.brokers.redis import RedisBroker as _RedisBroker
    from dramatiq.brokers.redis import _RedisConsumer
    from dramatiq.common import dq_name, q_name
    from dramatiq.errors import ConnectionClosed, DecodeError
    from dramatiq.middleware import Middleware
    from redis.backoff import NoBackoff
    from redis.exceptions import NoScriptError
    from redis.retry import Retry as RedisRetry
except ImportError as _exc:  # pragma: no cover - exercised by C24 with the module hidden
    raise missing_extra("dramatiq", "dramatiq", getattr(_exc, "name", None) or str(_exc)) from _exc

if TYPE_CHECKING:
    from dramatiq.broker import Broker
else:
    Broker = dramatiq.Broker

RedisBroker: Any = _RedisBroker  # untyped constructor

BACKEND = "dramatiq"
NAMESPACE = "dramatiq"

DEFAULT_HEARTBEAT_TIMEOUT_MS = 15_000
"""A worker whose heartbeat is older than this is dead and its unacked messages are requeued.
A live worker's consumers touch the heartbeat at least once per `worker_timeout` (1 s)."""

DEFAULT_MAINTENANCE_CHANCE = 50_000
"""Per million broker commands (5 %): how often a worker's fetch also runs maintenance. With
two polling consumers per queue, an idle worker runs it every few seconds; a maintenance run with
no dead worker costs two ZRANGEBYSCOREs."""

logger = logging.getLogger("jobs_core.backends.dramatiq")


class JobGaveUp(Exception):
    """Raised by an actor when the core gave up on a job: listed in `throws=`, so Dramatiq
    dead-letters the message without retrying it (`on_failure` already ran, in the core)."""

    def __init__(self, job_name: str, error: BaseException | None) -> None:
        super().__init__(f"job {job_name!r} gave up: {type(error).__name__}: {error}")
        self.job_name = job_name
        self.error = error


# -- connections --------------------------------------------------------------------------


def _is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def _is_amqp_url(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://"))


def _rabbitmq_broker_class() -> Any:
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError as exc:
        raise missing_extra("dramatiq", "dramatiq", f"{exc.name or 'pika'} (for amqp://)") from exc
    return RabbitmqBroker


def _check_url(url: str) -> None:
    if not (_is_redis_url(url) or _is_amqp_url(url)):
        raise JobConfigError(
            f"the dramatiq backend needs a redis:// or amqp:// broker URL, got {redact_url(url)!r}"
        )


def _producer_client(url: str, timeout: float) -> redis.Redis:
    """A Redis client that never waits longer than `timeout` and never retries on its own."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=RedisRetry(NoBackoff(), 0),
    )


PAYLOAD_REPR = "<payload>"
"""How Dramatiq's worker log lines show a job's argument: payloads may hold personal data or
secrets (C23), and a large one made every failure a log line as large (Celery: `ARGSREPR`)."""


class HidePayloads(logging.Filter):
    """Shows a message in Dramatiq's worker log lines as `actor(<payload>) [message id]`.

    Dramatiq logs `str(message)`, its arguments' reprs in full ("Failed to process message
    %s ..."); this filter, on the `dramatiq.worker` loggers, replaces them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, _MESSAGE_TYPES) for a in args):
            record.args = tuple(_without_payload(a) for a in args)
        return True


def _without_payload(arg: Any) -> Any:
    if isinstance(arg, _MESSAGE_TYPES):
        message: Any = arg
        return f"{message.actor_name}({PAYLOAD_REPR}) [{message.message_id}]"
    return arg


_MESSAGE_TYPES: tuple[type, ...] = (dramatiq.Message, dramatiq.broker.MessageProxy)
_HIDE_PAYLOADS = HidePayloads()


def hide_payloads(log: logging.Logger) -> None:
    """Install `HidePayloads` on `log` (once)."""
    if _HIDE_PAYLOADS not in log.filters:
        log.addFilter(_HIDE_PAYLOADS)


def hide_payloads_in_worker_logs() -> None:
    """Install `HidePayloads` on Dramatiq's worker-thread logger; `JobsMiddleware` does it on
    each consumer thread's own logger (`dramatiq.worker.ConsumerThread(<queue>)`) as it boots."""
    hide_payloads(logging.getLogger("dramatiq.worker.WorkerThread"))


class _WorkerConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, with three holes closed.

    - A message it cannot decode is dead-lettered, not fatal. Dramatiq's consumer raises
      `DecodeError` out of the worker's consumer loop: the loop logs it, drops the rest of the
      prefetched batch from memory and restarts, so the undecodable message and that batch stay
      fetched-but-unacked for as long as the worker process lives. Here the message is found by
      its data among this consumer's unacked ids, moved to the dead-letter queue
      (`<queue>.XQ`) with the broker's own `nack`, and logged.
    - Messages fetched while the connection broke are not stranded. Redis runs the fetch
      script (which marks the messages as this worker's) even when its reply is lost, as when
      the broker restarts; Dramatiq's consumer thread then makes a new consumer, but those
      messages stay in this worker's acks set, to come back only when the worker process dies.
    - Delayed messages likewise. A worker holds the messages of its delay queue (`<queue>.DQ`:
      retries, delayed jobs) in memory until their eta; when the connection breaks, Dramatiq's
      consumer thread drops them from memory, and they stay in the acks set too.

    So each new consumer, before its first fetch, puts back on its queue every message of
    this worker's acks set that the worker does not hold (for a delay queue: all of them,
    since their copies in memory are gone). The broker counts what the worker holds: given
    out by a consumer and not yet acked or nacked. An id acked meanwhile is left alone (the
    broker's requeue script moves only ids still in the acks set).
    """

    def __next__(self) -> Any:
        if not getattr(self, "_orphans_requeued", False):
            self._requeue_orphans()
            self._orphans_requeued = True
        while True:
            try:
                fetch: Any = super().__next__
                message = fetch()
            except DecodeError as exc:
                self._dead_letter(exc)
                continue
            if message is not None:
                self._held().add(message.options["redis_message_id"])
            return message

    def ack(self, message: Any) -> None:
        done: Any = super().ack
        done(message)  # on a connection error the worker tries again: still held till then
        self._held().discard(message.options.get("redis_message_id"))

    def nack(self, message: Any) -> None:
        done: Any = super().nack
        done(message)  # on a connection error the worker tries again: still held till then
        self._held().discard(message.options.get("redis_message_id"))

    def _held(self) -> _Held:
        broker: Any = self.broker
        held: _Held = broker.held(self.queue_name)
        return held

    def _requeue_orphans(self) -> None:
        broker: Any = self.broker
        acks = f"{broker.namespace}:__acks__.{broker.broker_id}.{self.queue_name}"
        held = self._held()
        try:
            fetched = {i.decode() for i in broker.client.smembers(acks)}
            if q_name(self.queue_name) != self.queue_name:  # a delay queue
                held.clear()
            orphans = sorted(fetched - held.snapshot())
            if orphans:
                broker.do_requeue(self.queue_name, *orphans)
        except redis.ConnectionError as exc:
            closed: Any = ConnectionClosed
            raise closed(exc) from None
        if orphans:
            logger.warning(
                "put %d message(s) back on %r: fetched by this worker while its connection to "
                "the broker broke, and not held by it",
                len(orphans),
                self.queue_name,
            )

    def _dead_letter(self, exc: DecodeError) -> None:
        data = exc.data
        broker: Any = self.broker
        client: Any = broker.client
        acks = f"{broker.namespace}:__acks__.{broker.broker_id}.{self.queue_name}"
        messages = f"{broker.namespace}:{self.queue_name}.msgs"
        message_id: str | None = None
        try:
            ids = sorted(client.smembers(acks))
            if ids:
                for candidate, stored in zip(ids, client.hmget(messages, ids)):
                    if stored == data:
                        message_id = candidate.decode()
                        break
            if message_id is not None:
                self.broker.do_nack(self.queue_name, message_id)
        except redis.RedisError:
            logger.exception("could not dead-letter an undecodable message on %r", self.queue_name)
        cause = exc.error if exc.error is not None else exc
        size = len(data) if isinstance(data, (bytes, str)) else 0
        where = (
            f"kept in the dead-letter queue {broker.namespace}:{self.queue_name}.XQ"
            if message_id is not None
            else "left unacked (not found among this worker's messages)"
        )
        logger.error(
            "undecodable message %s on queue %r (%d bytes, starts %r): not run; %s: %s: %s",
            message_id,
            self.queue_name,
            size,
            data[:80] if isinstance(data, (bytes, str)) else data,
            where,
            type(cause).__name__,
            str(cause)[:200],
        )


class _Held:
    """The Redis message ids of one queue that a worker process holds (thread-safe)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, message_id: str) -> None:
        with self._lock:
            self._ids.add(message_id)

    def discard(self, message_id: str | None) -> None:
        with self._lock:
            self._ids.discard(message_id or "")

    def clear(self) -> None:
        with self._lock:
            self._ids.clear()

    def snapshot(self) -> set[str]:
        with self._lock:
            return set(self._ids)


_HELD_LOCK = threading.Lock()

ENQUEUE_RETRY_SECONDS = 300.0
"""How long a worker keeps trying to enqueue (a retry, a delayed job that is due) while the
broker cannot be reached, before it gives up on that enqueue."""


class _WorkerRedisBroker(_RedisBroker):
    """The worker-side Redis broker: Dramatiq's, with `_WorkerConsumer`, and an `enqueue` that
    waits for the broker to come back.

    A retry is a new message enqueued by Dramatiq's `Retries` middleware; the old one is then
    acked. When that enqueue failed (the broker restarting), `Retries` logged the error, the old
    message was acked anyway, and the job was lost. Dramatiq itself retries acks until the
    connection recovers; this does the same for enqueues, for up to `ENQUEUE_RETRY_SECONDS`,
    without sending a message twice when only the reply was lost.
    """

    enqueue_retry_seconds = ENQUEUE_RETRY_SECONDS

    @property
    def consumer_class(self) -> Any:
        return _WorkerConsumer

    def held(self, queue_name: str) -> _Held:
        """What this worker process holds of `queue_name` (see `_WorkerConsumer`)."""
        table: dict[str, _Held] = self.__dict__.setdefault("_jobs_core_held", {})
        with _HELD_LOCK:
            return table.setdefault(queue_name, _Held())

    def enqueue(
        self, message: dramatiq.Message[Any], *, delay: int | None = None
    ) -> dramatiq.Message[Any]:
        """`RedisBroker.enqueue`, waiting for the broker to come back, and sent at most once.

        The message keeps one Redis id across attempts: when an attempt fails after Redis ran
        it (the broker shut down before its reply left), the next attempt finds the message
        stored under that id and does not send it again.
        """
        queue_name = message.queue_name
        message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
        if delay is not None:
            queue_name = dq_name(queue_name)
            eta = int(time.time() * 1000) + delay
            message = message.copy(queue_name=queue_name, options={"eta": eta})
        redis_id = message.options["redis_message_id"]
        stored_at = f"{self.namespace}:{queue_name}.msgs"
        self.emit_before("enqueue", message, delay)
        commands: Any = self  # `do_enqueue` is made by `RedisBroker.__getattr__`
        deadline = time.monotonic() + self.enqueue_retry_seconds
        pause, attempted = 0.1, False
        while True:
            try:
                if not (attempted and self.client.hexists(stored_at, redis_id)):
                    commands.do_enqueue(queue_name, redis_id, message.encode())
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                attempted = True
                if time.monotonic() + pause > deadline:
                    raise
                logger.warning(
                    "could not enqueue message %s (%s) on %r: %s; trying again in %.1fs",
                    message.message_id,
                    message.actor_name,
                    queue_name,
                    exc,
                    pause,
                )
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
        self.emit_after("enqueue", message, delay)
        return message


def make_worker_broker(
    broker_url: str,
    *,
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT_MS,
    maintenance_chance: int = DEFAULT_MAINTENANCE_CHANCE,
    middleware: list[Middleware] | None = None,
) -> Broker:
    """A worker-side broker for `broker_url` with jobs_core's crash-safety settings.

    Redis: `heartbeat_timeout` (ms) and `maintenance_chance` (per million commands) control how
    soon a dead worker's unacked messages come back (C20). Connecting times out after 10 s and
    a reply after 30 s (the worker's fetches never block in Redis), so a broker that hangs is
    noticed and the consumer reconnects (C21). The middleware is Dramatiq's default minus
    `TimeLimit`.
    """
    _check_url(broker_url)
    hide_payloads_in_worker_logs()
    if middleware is None:
        middleware = [
            m()
            for m in dramatiq.middleware.default_middleware
            if m is not dramatiq.middleware.TimeLimit
        ]
    if _is_amqp_url(broker_url):
        broker: Broker = _rabbitmq_broker_class()(url=broker_url, middleware=middleware)
        return broker
    client = redis.Redis.from_url(
        broker_url,
        socket_connect_timeout=10,
        socket_timeout=30,
        socket_keepalive=True,
        health_check_interval=30,
    )
    broker_class: Any = _WorkerRedisBroker  # untyped constructor
    redis_broker: Broker = broker_class(
        client=client,
        middleware=middleware,
        heartbeat_timeout=heartbeat_timeout,
        maintenance_chance=maintenance_chance,
    )
    return redis_broker


# -- producer -----------------------------------------------------------------------------


def _millis(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


_SCRIPT_LAYOUT = (
    "local command = ARGV[1]",
    "local timestamp = ARGV[2]",
    "local queue_name = ARGV[3]",
    "local worker_id = ARGV[4]",
    "local heartbeat_timeout = ARGV[5]",
    "local dead_message_ttl = ARGV[6]",
    "local do_maintenance = ARGV[7]",
    "local max_unpack_size = ARGV[8]",
    "for i=9,#ARGV do",
    "local message_id = ARGS[1]",
    "local message_data = ARGS[2]",
)

_ENQUEUE_STEPS = (
    'local heartbeats = namespace .. ":__heartbeats__"',
    'redis.call("zadd", heartbeats, timestamp, worker_id)',
    'local queue_full_name = namespace .. ":" .. queue_name',
    'local queue_messages = queue_full_name .. ".msgs"',
    'redis.call("hset", queue_messages, message_id, message_data)',
    'redis.call("rpush", queue_full_name, message_id)',
)
"""What the script's `enqueue` writes, which `_RedisSender.send_batch` writes itself; another
Dramatiq version without these lines gets one script call per message, pipelined."""

BATCH_CHUNK = 1_000
"""Messages per HSET / RPUSH command inside a batch's transaction."""


def _enqueue_each(broker: Broker, queue: str, jobs: Sequence[PreparedJob]) -> None:
    """Enqueue through the broker's public API, one message at a time."""
    for prepared in jobs:
        message: Any = dramatiq.Message(
            queue_name=queue,
            actor_name=prepared.job.name,
            args=(prepared.data,),
            kwargs={},
            options={},
            message_id=prepared.dispatch_id,
        )
        delay = prepared.delay_seconds() if prepared.eta is not None else 0.0
        broker.enqueue(message, delay=_millis(delay) if delay > 0 else None)


class _RedisSender:
    """Enqueues messages with Dramatiq's `dispatch` Lua script, as `RedisBroker.enqueue` does,
    minus the message copies and middleware hooks a producer does not need."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self._execute: Any = client.execute_command  # typed loosely by redis-py
        self.queue = queue
        self.delay_queue = dq_name(queue)
        # A broker without middleware gives us its registered `dispatch` script (and an id
        # for the heartbeat set the script touches); it does not talk to Redis here.
        self.broker = RedisBroker(client=client, middleware=[], namespace=NAMESPACE)
        script = self.broker.scripts["dispatch"]
        self.sha: str = script.sha
        self.script: Any = script.script
        self.encoder = dramatiq.get_encoder()
        text = self.script.decode() if isinstance(self.script, bytes) else str(self.script)
        # The argument layout this sender writes; another Dramatiq version with another
        # layout falls back to `RedisBroker.enqueue`, one message per round trip.
        self.layout_ok = all(marker in text for marker in _SCRIPT_LAYOUT)
        self.batch_ok = self.layout_ok and all(step in text for step in _ENQUEUE_STEPS)
        # Arguments are passed as bytes: redis-py then packs them without converting each.
        self._head = (self.sha.encode(), b"1", NAMESPACE.encode(), b"enqueue")
        self._queue = queue.encode()
        self._delay_queue = self.delay_queue.encode()
        self._namespace = NAMESPACE.encode() + b":"
        self._heartbeats = self._namespace + b"__heartbeats__"
        self._fixed = (
            str(self.broker.broker_id).encode(),
            str(self.broker.heartbeat_timeout).encode(),
            str(self.broker.dead_message_ttl).encode(),
            b"0",  # no maintenance from producers: workers do it while they poll
            b"1000",  # max_unpack_size: unused by `enqueue` without maintenance
        )

    def _args(self, prepared: PreparedJob, now_ms: int, now: bytes) -> tuple[bytes, ...]:
        """EVALSHA's arguments (after the command name) for one message."""
        queue_arg, message_id, data = self._message(prepared, now_ms)
        return (*self._head, now, queue_arg, *self._fixed, message_id, data)

    def _message(self, prepared: PreparedJob, now_ms: int) -> tuple[bytes, bytes, bytes]:
        """(queue, message id, encoded message) for one job, as `RedisBroker.enqueue` makes them."""
        options: dict[str, Any] = {"redis_message_id": prepared.dispatch_id}
        queue, queue_arg = self.queue, self._queue
        if prepared.eta is not None:
            eta_ms = math.ceil(prepared.eta.astimezone(timezone.utc).timestamp() * 1000)
            if eta_ms > now_ms:  # a run_at in the past goes straight to the queue
                queue, queue_arg = self.delay_queue, self._delay_queue
                options["eta"] = eta_ms
        data = self.encoder.encode(
            {
                "queue_name": queue,
                "actor_name": prepared.job.name,
                "args": [prepared.data],
                "kwargs": {},
                "options": options,
                "message_id": prepared.dispatch_id,
                "message_timestamp": now_ms,
            }
        )
        return queue_arg, prepared.dispatch_id.encode(), data

    def send(self, jobs: Sequence[PreparedJob]) -> None:
        if not self.layout_ok:
            _enqueue_each(self.broker, self.queue, jobs)
            return
        now_ms = int(time.time() * 1000)
        now = str(now_ms).encode()
        if len(jobs) == 1:
            args = self._args(jobs[0], now_ms, now)
            try:
                self._execute("EVALSHA", *args)
            except NoScriptError:
                self._execute("EVAL", self.script, *args[1:])
            return
        if self.batch_ok:
            self.send_batch(jobs, now_ms, now)
            return
        pending = [self._args(p, now_ms, now) for p in jobs]
        for _ in range(2):
            pipe: Any = self.client.pipeline(transaction=False)
            for args in pending:
                pipe.execute_command("EVALSHA", *args)
            results = pipe.execute(raise_on_error=False)
            missing = [a for a, r in zip(pending, results) if isinstance(r, NoScriptError)]
            for result in results:
                if isinstance(result, Exception) and not isinstance(result, NoScriptError):
                    raise result
            if not missing:
                return
            # The script cache was empty (a fresh or restarted Redis): load it once, resend
            # only the messages that did not go in.
            self.client.script_load(self.script)
            pending = missing
        raise NoScriptError("the dramatiq dispatch script could not be loaded")

    def send_batch(self, jobs: Sequence[PreparedJob], now_ms: int, now: bytes) -> None:
        """Enqueue several messages in one MULTI/EXEC: the script's `enqueue` writes for each
        (heartbeat ZADD, HSET of the message, RPUSH of its id), as a few commands in all.

        One script call per message cost the producer ~40 % of a batch's CPU in packing 13
        arguments per message, and Redis one Lua run per message. Here every message goes in,
        or none does (the transaction); ids keep their order within each queue.
        """
        by_queue: dict[bytes, list[tuple[bytes, bytes]]] = {}
        for prepared in jobs:
            queue, message_id, data = self._message(prepared, now_ms)
            by_queue.setdefault(queue, []).append((message_id, data))
        pipe: Any = self.client.pipeline(transaction=True)
        pipe.execute_command("ZADD", self._heartbeats, now, self._fixed[0])
        for queue, messages in by_queue.items():
            full_name = self._namespace + queue
            for start in range(0, len(messages), BATCH_CHUNK):
                chunk = messages[start : start + BATCH_CHUNK]
                pipe.execute_command(
                    "HSET", full_name + b".msgs", *[part for message in chunk for part in message]
                )
                pipe.execute_command("RPUSH", full_name, *[message_id for message_id, _ in chunk])
        pipe.execute()


class _BrokerSender:
    """Enqueues through any Dramatiq broker (RabbitMQ): one `broker.enqueue` per message."""

    def __init__(self, broker: Broker, queue: str) -> None:
        self.broker = broker
        self.queue = queue
        broker.declare_queue(queue)

    def send(self, jobs: Sequence[PreparedJob]) -> None:
        _enqueue_each(self.broker, self.queue, jobs)


class DramatiqDispatcher(BaseDispatcher):
    """Sends jobs to Dramatiq workers through the broker at `broker_url`, on `queue`."""

    backend_name = BACKEND

    def __init__(
        self,
        broker_url: str,
        queue: str = "default",
        *,
        instrumentation: Instrumentation | None = None,
        timeout: float = 5.0,
        idempotency: IdempotencyStore | None = None,
        idempotency_url: str | None = None,
        **options: Any,
    ) -> None:
        _check_url(broker_url)
        self.queue = queue
        self.broker_url = broker_url
        self.client: redis.Redis | None = None
        self._sender: _RedisSender | _BrokerSender
        if _is_redis_url(broker_url):
            self.client = _producer_client(broker_url, timeout)
            self._sender = _RedisSender(self.client, queue)
            store = idempotency or RedisIdempotencyStore(self.client)
        else:
            broker = _rabbitmq_broker_class()(url=broker_url, middleware=[])
            self._sender = _BrokerSender(broker, queue)
            if idempotency is not None:
                store = idempotency
            elif idempotency_url:
                store = RedisIdempotencyStore(_producer_client(idempotency_url, timeout))
            else:
                logger.warning(
                    "dramatiq on RabbitMQ: idempotency keys are kept in this process only; "
                    "pass idempotency_url='redis://...' to share them between producers"
                )
                store = MemoryIdempotencyStore()
        super().__init__(
            instrumentation=instrumentation, idempotency=store, timeout=timeout, **options
        )
        self._send_messages = self._sender.send

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        self._send_messages(jobs)
        return [p.dispatch_id for p in jobs]

    def close(self) -> None:
        """Close the broker connections (the dispatcher can not be used afterwards)."""
        if self.client is not None:
            self.client.close()
        if isinstance(self._sender, _BrokerSender):
            self._sender.broker.close()

    def __repr__(self) -> str:
        return (
            f"DramatiqDispatcher(broker_url={redact_url(self.broker_url)!r}, queue={self.queue!r})"
        )


def create_dispatcher(
    settings: JobsSettings,
    *,
    context: ContextSource = None,
    instrumentation: Instrumentation | None = None,
    **options: Any,
) -> DramatiqDispatcher:
    """The `JOBS_BACKEND=dramatiq` factory used by `jobs_core.create_dispatcher`.

    `context` is not used: the producer runs no handler code.
    """
    return DramatiqDispatcher(
        settings.broker_url,
        settings.queue,
        instrumentation=instrumentation,
        timeout=settings.dispatch_timeout,
        max_payload_bytes=settings.max_payload_bytes,
        **options,
    )


# -- worker -------------------------------------------------------------------------------


class JobsMiddleware(Middleware):
    """Keeps the current message per worker thread (for the attempt number and dispatch id)
    and reports messages for unknown actors through the core before they are dead-lettered."""

    def __init__(self, instrumentation: Instrumentation | None = None) -> None:
        self.instrumentation = instrumentation
        self.local = threading.local()

    def before_process_message(self, broker: Broker, message: Any) -> None:
        self.local.message = message

    def after_process_message(
        self,
        broker: Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self.local.message = None

    after_skip_message = after_process_message

    def after_consumer_thread_boot(self, broker: Broker, thread: Any) -> None:
        hide_payloads(thread.logger)

    def after_worker_thread_boot(self, broker: Broker, thread: Any) -> None:
        hide_payloads(thread.logger)

    def before_nack(self, broker: Broker, message: Any) -> None:
        if message.actor_name not in broker.actors:
            report_unknown_job(
                message.actor_name,
                dispatch_id=message.message_id,
                backend=BACKEND,
                instrumentation=self.instrumentation,
                where=f"the dead-letter queue {NAMESPACE}:{message.queue_name}.XQ",
            )


def _jobs_middleware(broker: Broker, instrumentation: Instrumentation | None) -> JobsMiddleware:
    for middleware in broker.middleware:
        if isinstance(middleware, JobsMiddleware):
            if middleware.instrumentation is None:
                middleware.instrumentation = instrumentation
            return middleware
    made = JobsMiddleware(instrumentation)
    broker.add_middleware(made)
    return made


def _actor_body(
    job: Job[Any, Any],
    context: ContextSource,
    instrumentation: Instrumentation | None,
    current: JobsMiddleware,
) -> Callable[[Any], None]:
    local = current.local

    def run(*args: Any, **kwargs: Any) -> None:
        # One argument, the payload. Anything else was not sent by a dispatcher: the core
        # gets it as it is and treats it as bad input (C16).
        data: Any = args[0] if len(args) == 1 and not kwargs else [*args, kwargs]
        message: Any = getattr(local, "message", None)
        if message is not None:
            attempt = int(message.options.get("retries", 0))
            dispatch_id = message.message_id
        else:  # called directly, outside a worker
            attempt, dispatch_id = 0, None
        outcome = run_job_sync(
            job,
            data,
            context=context,
            attempt=attempt,
            dispatch_id=dispatch_id,
            backend=BACKEND,
            instrumentation=instrumentation,
        )
        if outcome.completed:
            return
        if outcome.should_retry:
            retry_in = outcome.retry_in.total_seconds() if outcome.retry_in else 0.0
            raise dramatiq.Retry(delay=_millis(retry_in))
        raise JobGaveUp(job.name, outcome.error)

    run.__name__ = run.__qualname__ = f"job_{job.name}"
    return run


def register_actors(
    registry: JobRegistry[Any],
    *,
    context: ContextSource = None,
    broker: Broker | None = None,
    broker_url: str | None = None,
    instrumentation: Instrumentation | None = None,
    queue: str | None = None,
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT_MS,
    maintenance_chance: int = DEFAULT_MAINTENANCE_CHANCE,
) -> Broker:
    """Declare one Dramatiq actor per job of `registry` and return the broker.

    Without `broker=`, a broker for `broker_url` (default `JOBS_BROKER_URL`) is made with
    `make_worker_broker` and set as Dramatiq's global broker, so the native CLI works with a
    module that calls this at import: `dramatiq myapp.worker`. `queue` defaults to
    `JOBS_QUEUE`. `context` is a ctx object or a sync or async factory called for each run.
    """
    if broker is None or queue is None:
        settings = load_settings() if broker_url is None or queue is None else None
        queue = queue or (settings.queue if settings else "default")
        if broker is None:
            url = broker_url or (settings.broker_url if settings else "")
            broker = make_worker_broker(
                url, heartbeat_timeout=heartbeat_timeout, maintenance_chance=maintenance_chance
            )
            dramatiq.set_broker(broker)
    instrumentation = with_logging(instrumentation)
    current = _jobs_middleware(broker, instrumentation)
    hide_payloads_in_worker_logs()
    for job in registry:
        retry = job.retry
        dramatiq.actor(
            actor_name=job.name,
            queue_name=queue,
            broker=broker,
            max_retries=retry.attempts,
            min_backoff=_millis(retry.min_backoff.total_seconds()),
            max_backoff=_millis(retry.max_backoff.total_seconds()),
            throws=(JobGaveUp,),
        )(_actor_body(job, context, instrumentation, current))
    return broker


def close_broker(broker: Broker) -> None:
    """Close `broker` and, for Redis, its connection pool."""
    broker.close()
    client = getattr(broker, "client", None)
    if client is not None:
        client.close()


def _worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs_core worker APP:REGISTRY (JOBS_BACKEND=dramatiq)",
        description="Run a Dramatiq worker for a jobs_core registry in the foreground.",
    )
    parser.add_argument("--processes", "-p", type=int, default=1, help="worker processes")
    parser.add_argument("--threads", "-t", type=int, default=8, help="threads per process")
    parser.add_argument("--queue", "-Q", default=None, help="queue (default JOBS_QUEUE)")
    parser.add_argument(
        "--heartbeat-timeout", type=int, default=DEFAULT_HEARTBEAT_TIMEOUT_MS, help="ms"
    )
    parser.add_argument(
        "--maintenance-chance", type=int, default=DEFAULT_MAINTENANCE_CHANCE, help="per million"
    )
    parser.add_argument("--worker-timeout", type=int, default=1000, help="poll interval, ms")
    parser.add_argument(
        "--shutdown-timeout", type=int, default=600_000, help="ms to let running jobs finish"
    )
    return parser


def _serve(
    registry: JobRegistry[Any],
    context: ContextSource,
    settings: JobsSettings,
    options: argparse.Namespace,
    instrumentation: Instrumentation | None,
) -> int:
    """One worker process: run until SIGTERM / SIGINT, then stop gracefully."""
    broker = register_actors(
        registry,
        context=context,
        broker_url=settings.broker_url,
        queue=options.queue or settings.queue,
        instrumentation=instrumentation,
        heartbeat_timeout=options.heartbeat_timeout,
        maintenance_chance=options.maintenance_chance,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(
        broker, worker_threads=options.threads, worker_timeout=options.worker_timeout
    )
    worker.start()
    logger.info(
        "dramatiq worker pid=%s: %d jobs on queue %r at %s, %d threads",
        os.getpid(),
        len(list(registry)),
        options.queue or settings.queue,
        settings.redacted_broker_url,
        options.threads,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        logger.info("dramatiq worker pid=%s: stopping", os.getpid())
        worker.stop(timeout=options.shutdown_timeout)
        close_broker(broker)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def run_worker(
    registry: JobRegistry[Any],
    *,
    context: ContextSource,
    settings: JobsSettings,
    argv: list[str],
    instrumentation: Instrumentation | None = None,
) -> int:
    """Run a Dramatiq worker for `registry` in the foreground (`python -m jobs_core worker`).

    Options (argv): `--processes N` (forked worker processes, default 1), `--threads N`
    (default 8), `--queue`, `--heartbeat-timeout MS`, `--maintenance-chance N`,
    `--worker-timeout MS` (idle poll interval: delayed jobs and retries may start up to this
    much after their time), `--shutdown-timeout MS` (default 600 s, as Dramatiq's). SIGTERM or
    SIGINT stops every process gracefully: running jobs finish, prefetched messages go back to
    the queue; a job still running at the shutdown timeout is redelivered later, as after a
    crash.
    """
    options = _worker_parser().parse_args(argv)
    if options.processes < 1 or options.threads < 1:
        raise SystemExit("--processes and --threads must be at least 1")
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"
        )
    if options.processes == 1:
        return _serve(registry, context, settings, options, instrumentation)

    children: list[int] = []
    for _ in range(options.processes):
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                code = _serve(registry, context, settings, options, instrumentation)
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        worst = max(worst, os.waitstatus_to_exitcode(status) if status else 0)
    return 1 if worst else 0


def dead_letters(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """The dead-lettered messages of `queue` on a Redis broker (for operators and tests).

    A message that could not be decoded is given as `{"message_id": ..., "undecodable": raw}`.
    """
    client = redis.Redis.from_url(broker_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        raw: dict[Any, Any] = client.hgetall(f"{NAMESPACE}:{queue}.XQ.msgs")
    finally:
        client.close()
    decode = dramatiq.get_encoder().decode
    found: list[dict[str, Any]] = []
    for message_id, data in raw.items():
        try:
            decoded = decode(data)
        except Exception:
            decoded = None
        if isinstance(decoded, dict):
            found.append(dict(decoded))
        else:  # an undecodable message, dead-lettered by the worker: id and raw bytes
            found.append({"message_id": message_id.decode(), "undecodable": data})
    return found


def new_queue_name(prefix: str = "jobs") -> str:
    """A unique queue name (tests, isolated workers)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


__all__ = [
    "DEFAULT_HEARTBEAT_TIMEOUT_MS",
    "DEFAULT_MAINTENANCE_CHANCE",
    "DramatiqDispatcher",
    "JobGaveUp",
    "JobsMiddleware",
    "close_broker",
    "create_dispatcher",
    "dead_letters",
    "make_worker_broker",
    "register_actors",
    "run_worker",
]
