"""Patches to kombu 5.7 and Celery 5.7 that keep a Celery job from being lost on Redis.

`install_worker_patches(app)` puts them on a worker app; a producer needs none. Each patch names
the upstream behaviour it works around, the upstream issue where there is one, and its test.

1. **Atomic fetch** (kombu's Redis transport, celery/kombu#305, open since 2014; celery/celery#4354).
   kombu takes a message off the queue with `BRPOP` and records it as unacked (`HSET unacked`) in
   a second command, from the worker, after the reply arrived. A worker killed between the two,
   or a Redis that stops after serving the `BRPOP`, loses that message before it ever ran.
   `RedisChannel` fetches with one Lua script that moves the message into a hash owned by the
   consuming channel (`<unacked_key>:held:<consumer id>`), so at every instant the message is
   either in its queue or held by a known consumer. Test: tests/celery/test_patches.py
   `test_a_message_served_to_a_consumer_that_dies_is_not_lost`.
2. **Dead consumers, not old messages** (kombu's `visibility_timeout`). kombu gives a message
   back once it has been unacked for `visibility_timeout` (kombu: 1 h; the adapter: 2 h), alive
   or dead consumer alike: a killed worker's jobs waited hours, and a message held on purpose
   (an ETA waiting in a worker) ran twice once it was older than that. Each process that
   consumes beats for its consumers in a sorted set (`<unacked_key>:consumers`, Redis server
   time), and returns the messages held by any consumer that missed `heartbeat_timeout` (15 s)
   to the front of their queues; a live consumer keeps what it holds for as long as it needs.
   Tests: `test_a_dead_consumers_messages_come_back_within_the_bound`,
   `test_a_live_consumer_keeps_a_message_past_the_visibility_timeout`, and the SIGKILL runs in
   tests/celery/test_durability.py.
3. **Closing a collected connection** (kombu; the same `AttributeError` as celery/kombu#582,
   reached today by Celery's reconnect). On a connection loss, Celery's consumer `collect()`s the
   connection (which clears the transport's `client`) and then `close()`s it; when the first
   close of the default channel was cut short by the lost socket, the second one restores the
   channel's unacked messages through `_connparams()`, which reads `transport.client.hostname`:
   `AttributeError: 'NoneType' object has no attribute 'hostname'`, not a connection error, so
   the worker stopped ("Unrecoverable error") instead of reconnecting (3 of 6 Redis restarts).
   `RedisChannel._connparams` keeps the last parameters it was built from. Test:
   `test_closing_a_collected_connection_with_redis_gone_is_a_connection_error`.
4. **Poison list items** (kombu; celery/celery#1113, celery/celery#4308). An item on the queue's
   list that is not JSON raised out of the transport and stopped the worker; JSON of the wrong
   shape (no `properties`) raised `KeyError`, which Celery took for a lost connection, and the
   item vanished. Such an item is moved, in one script, from the consumer's held hash to
   `<queue>.dead` (wrapped as a kombu message whose body is the item as it came) and logged with
   its source list, size, SHA-256 and id. Tests: tests/poison/test_poison.py (`raw-*` cases).
5. **Bodies Celery cannot decode** (Celery's `Consumer.on_decode_error`; celery/celery#4308).
   A message without a `task` header whose body cannot be decoded was logged and acked: gone.
   `Consumer` treats it as Celery treats any other malformed message: rejected and announced
   with `task_rejected`, on which the adapter keeps it in `<queue>.dead`; it and a message
   without a task name are logged with their queue, ids, size and SHA-256. Test: tests/poison
   (`undecodable-body`, `no-task-name`), on Redis and on RabbitMQ.

6. **Malformed task bodies** (Celery's default task strategy). Celery reads a message's body in
   the consumer thread: a body of the wrong shape (not `[args, kwargs, embed]`) raised
   `ValueError` out of the consumer loop ("Unrecoverable error": the worker stopped, and so did
   every worker that fetched the message again), and a body that is not JSON was acked and
   dropped. `malformed_messages_are_invalid` turns both into `InvalidTaskError`: Celery logs the
   message, rejects it without a retry and sends `task_rejected`, where the adapter keeps it.
   Test: tests/poison/test_poison.py (`not-json`, `wrong-shape` on Celery).

8. **A keyed dispatch claims and pushes in one step** (the producer; jobs_core's own gap). The
   idempotency key was claimed in one Redis call and the task pushed in another: a producer or
   outbox relay killed between the two left the key claimed for a task that was never sent, and
   every resend came back "deduplicated". `ProducerChannel._put` pushes a keyed task with the
   script that claims its key (`CLAIM_AND_PUSH`). Test: tests/celery/test_dispatcher.py
   `test_a_keyed_dispatch_killed_before_its_publish_leaves_no_claim`.

7. **RabbitMQ's `consumer_timeout`** (celery/celery#6760, open). A delivery left unacked for
   RabbitMQ's `consumer_timeout` (30 min by default since 3.8.17) closes its channel, and the
   Celery worker stops ("Unrecoverable error: PreconditionFailed"); Celery holds a message
   unacked while it waits for its ETA, and the adapter allowed delays up to 90% of a 2 h
   visibility timeout. `holding_limit()` caps, on AMQP, how long the adapter lets a worker hold
   a message (the dispatch delay limit, the retry hop) at that timeout. Tests:
   tests/celery/test_amqp.py.

9. **A retry sent while the broker is away** (Celery's `Task.retry`). A retry is a new message
   published before the old one is acked; when that publish failed (Redis restarting), Celery
   gave up after its default policy's 0.6 s and raised `Reject(requeue=False)`: the old message
   was dropped and the job lost (1 of 2,000 jobs in a Redis restart run). `retry_patiently`
   waits up to the core's `BROKER_AWAY_SECONDS` (5 min) for the broker, and if it is still away puts the
   message back (`requeue=True`, the same attempt runs again) instead of dropping it. Flow
   control's and long waits' resends wait as long. Test: tests/celery/test_durability.py
   `test_C21_a_retry_sent_while_the_broker_is_away_is_not_lost`.

What the Redis patches change for users: an idle consumer looks for work every
`idle_poll_interval` (0.1 s) instead of blocking in `BRPOP` (Redis cannot move an item
atomically out of one of several lists while blocking), and `visibility_timeout` applies only to
messages left in kombu's `unacked` hash by unpatched consumers.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import ssl
import threading
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from time import monotonic
from typing import Any

import redis
from celery.exceptions import InvalidTaskError, Reject
from celery.worker.consumer import consumer as _celery_consumer
from kombu.exceptions import DecodeError
from kombu.transport import redis as _redis_transport
from kombu.transport import virtual as _virtual_transport
from kombu.utils import encoding as _encoding
from kombu.utils import json as _json

from jobs_core.worker import BROKER_AWAY_SECONDS

# kombu's and Celery's own names, untyped upstream.
_kombu_redis: Any = _redis_transport
_virtual: Any = _virtual_transport
_CeleryConsumer: Any = _celery_consumer.Consumer
bytes_to_str: Any = _encoding.bytes_to_str
dumps: Any = _json.dumps
loads: Any = _json.loads

logger = logging.getLogger("jobs_core.celery")

REDIS_TRANSPORT = f"{__name__}:RedisTransport"
"""`broker_transport` for a `redis://` or `rediss://` broker URL: the patched transport."""

CONSUMER = f"{__name__}:Consumer"
"""`worker_consumer`: Celery's consumer with patch 5."""

DEAD_LETTER_SUFFIX = ".dead"
"""A poison item on queue `q` is kept in the list `q.dead` (as `dead_letter_queue(q)`)."""

DEFAULT_HEARTBEAT_TIMEOUT = 15.0
"""Seconds without a heartbeat after which a consumer's held messages go back to their queues."""

DEFAULT_IDLE_POLL_INTERVAL = 0.1
"""Seconds an idle consumer waits before it looks for work again."""

SWEEP_BATCH = 100
"""Dead consumers handled by one sweep script (the next sweep takes the rest)."""

# One entry of a held hash: "<length of the source key>:<source key><item as it came>".
_LUA_HELPERS = """
local function source_and_item(entry)
    local colon = string.find(entry, ':', 1, true)
    local n = tonumber(string.sub(entry, 1, colon - 1))
    return string.sub(entry, colon + 1, colon + n), string.sub(entry, colon + n + 1)
end
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function give_back_all(held)
    local entries = redis.call('HGETALL', held)
    for i = 2, #entries, 2 do
        local source, item = source_and_item(entries[i])
        redis.call('RPUSH', source, item)
    end
    redis.call('DEL', held)
    return #entries / 2
end
"""

CLAIM = (
    _LUA_HELPERS
    + """
-- KEYS[1] this consumer's held hash, KEYS[2] the consumers set, KEYS[3..] the lists, in order.
-- ARGV[1] consumer id, ARGV[2] the field for the item taken.
redis.call('ZADD', KEYS[2], now_ms(), ARGV[1])
for i = 3, #KEYS do
    local item = redis.call('RPOP', KEYS[i])
    if item then
        redis.call('HSET', KEYS[1], ARGV[2], string.len(KEYS[i]) .. ':' .. KEYS[i] .. item)
        return {KEYS[i], item}
    end
end
return false
"""
)

GIVE_BACK = (
    _LUA_HELPERS
    + """
-- KEYS[1] held hash; ARGV[1] field, ARGV[2] '1' to the back of its queue (a requeue).
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
local source, item = source_and_item(entry)
if ARGV[2] == '1' then redis.call('LPUSH', source, item) else redis.call('RPUSH', source, item) end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""
)

RELEASE = (
    _LUA_HELPERS
    + """
-- KEYS[1] held hash, KEYS[2] consumers set; ARGV[1] consumer id. Everything back; gone.
local n = give_back_all(KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
"""
)

BURY = """
-- KEYS[1] held hash, KEYS[2] dead-letter list; ARGV[1] field, ARGV[2] the dead letter.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[2])
    return 1
end
return 0
"""

HEARTBEAT = (
    _LUA_HELPERS
    + """
-- KEYS[1] consumers set; ARGV consumer ids. XX: a consumer released or swept stays gone.
local now = now_ms()
for i = 1, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i]) end
return #ARGV
"""
)

SWEEP = (
    _LUA_HELPERS
    + """
-- KEYS[1] consumers set; ARGV[1] timeout ms, ARGV[2] held hash prefix, ARGV[3] batch.
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms() - tonumber(ARGV[1]),
                        'LIMIT', 0, tonumber(ARGV[3]))
local restored = 0
for _, id in ipairs(dead) do
    restored = restored + give_back_all(ARGV[2] .. id)
    redis.call('ZREM', KEYS[1], id)
end
return {restored, #dead}
"""
)


def held_count(client: Any, unacked_key: str = "unacked") -> int:
    """Messages held by consumers right now (delivered, not yet acked): for tests and operators."""
    return sum(int(client.hlen(key)) for key in client.scan_iter(f"{unacked_key}:held:*"))


def _eval(client: Any, script: str, keys: list[str], args: list[Any]) -> Any:
    return client.execute_command("EVAL", script, len(keys), *keys, *args)


# -- patch 5: Celery's consumer --------------------------------------------------------------


class Consumer(_CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer: undecodable bodies rejected and announced instead of acked (patch 5);
    every malformed message logged with what finds it again."""

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        _log_malformed(message, "whose body cannot be decoded", exc)
        self.on_invalid_task(None, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _log_malformed(message, "that is not a task message (no task name)", None)
        super().on_unknown_message(body, message)


def _log_malformed(message: Any, what: str, exc: BaseException | None) -> None:
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    properties = message.properties or {}
    logger.error(
        "message on queue %r %s (message id %s, correlation id %s, %d bytes, sha256 %s): "
        "not run; rejected and kept in the dead letters%s",
        (message.delivery_info or {}).get("routing_key"),
        what,
        properties.get("message_id"),
        properties.get("correlation_id"),
        len(body),
        hashlib.sha256(body).hexdigest(),
        f": {type(exc).__name__}: {str(exc)[:200]}" if exc is not None else "",
    )


# -- patches 1-4: kombu's Redis transport ----------------------------------------------------


class HeldQoS(_kombu_redis.QoS):  # type: ignore[misc]
    """Acks and requeues against the consumer's held hash (the message is already there)."""

    channel: RedisChannel

    def append(self, message: Any, delivery_tag: Any) -> None:
        # kombu writes the unacked hash here, after the message left its queue: patch 1 moved
        # it into the held hash in the same script that took it off the queue.
        _virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        self.channel._forget(delivery_tag)
        _virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if requeue:
            self.channel._give_back(delivery_tag, to_back=True)
        else:
            self.channel._forget(delivery_tag)
        _virtual.QoS.ack(self, delivery_tag)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        self.channel._give_back(tag, to_back=leftmost)

    def restore_unacked(self, client: Any = None) -> None:
        self.channel._release()
        self._delivered.clear()

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        # Still sweeps kombu's own `unacked` hash, for messages left there by unpatched workers.
        super().restore_visible(start, num, interval)


class RedisChannel(_kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel with the atomic fetch, held hash, poison burial (patches 1-4)."""

    QoS = HeldQoS

    heartbeat_timeout = DEFAULT_HEARTBEAT_TIMEOUT
    heartbeat_interval: float | None = None
    """Seconds between heartbeats and sweeps; default a tenth of `heartbeat_timeout`."""
    idle_poll_interval = DEFAULT_IDLE_POLL_INTERVAL
    dead_letter_suffix = DEAD_LETTER_SUFFIX

    from_transport_options = (
        *_kombu_redis.Channel.from_transport_options,
        "heartbeat_timeout",
        "heartbeat_interval",
        "idle_poll_interval",
        "dead_letter_suffix",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.consumer_id = uuid.uuid4().hex
        self._fields: dict[Any, str] = {}
        self._field_ids = itertools.count(1)
        self._claim_field: str | None = None
        self._next_claim_at = 0.0
        self._claimed = False
        self._no_ack_queues: set[str] = set()
        self._saved_connparams: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)

    # keys (kombu's prefixing client does not know EVAL: every key is prefixed here)

    def _key(self, name: str) -> str:
        return f"{self.global_keyprefix}{name}"

    @property
    def held_key(self) -> str:
        return self._key(f"{self.unacked_key}:held:{self.consumer_id}")

    @property
    def held_prefix(self) -> str:
        return self._key(f"{self.unacked_key}:held:")

    @property
    def consumers_key(self) -> str:
        return self._key(f"{self.unacked_key}:consumers")

    def _claim_args(self, queues: list[str]) -> tuple[list[str], list[Any]]:
        lists = [self._key(self._q_for_pri(q, pri)) for pri in self.priority_steps for q in queues]
        field = str(next(self._field_ids))
        if not self._claimed:
            self._claimed = True
            self.connection.watch(self)
        return [self.held_key, self.consumers_key, *lists], [self.consumer_id, field]

    @contextmanager
    def _plain_client(self) -> Iterator[Any]:
        # Not kombu's client class: with `global_keyprefix` it would prefix HDEL's key twice.
        yield redis.Redis(connection_pool=self.pool)

    # patch 3: a collected connection is a lost connection, not an AttributeError

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is None or transport.client is None:
            saved = self._saved_connparams.get(asynchronous)
            if saved is None:
                raise redis.exceptions.ConnectionError("the broker connection was closed")
            return dict(saved)
        params: dict[str, Any] = super()._connparams(asynchronous)
        self._saved_connparams[asynchronous] = dict(params)
        return params

    # patch 1: the atomic fetch, driven by kombu's event loop as BRPOP was

    def _brpop_start(self, timeout: Any = None) -> None:
        if self._next_claim_at > monotonic():
            return  # idle: the transport's timer brings the loop back when it is time
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys, args = self._claim_args(queues)
        self._claim_field = args[1]
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        connection.send_command("EVAL", CLAIM, len(keys), *keys, *args)

    def _brpop_read(self, **options: Any) -> bool:
        connection = self.client.connection
        try:
            if not self._in_poll:
                # Readable without a claim in flight: the server closed the idle connection.
                if connection is not None:
                    connection.disconnect()
                raise Empty()
            try:
                reply = self.client.parse_response(connection, "EVAL", **options)
            except self.connection_errors:
                connection.disconnect()
                raise
            except self.ResponseError:
                # Redis refused the script (out of memory, read-only replica): try again later.
                logger.exception("Redis refused to hand out a message; retrying in 1 s")
                self._next_claim_at = monotonic() + 1.0
                raise Empty() from None
            field, self._claim_field = self._claim_field, None
            if not reply:
                self._next_claim_at = monotonic() + self.idle_poll_interval
                raise Empty()
            self._next_claim_at = 0.0
            return self._deliver_claimed(reply, field)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _poll_error(self, type: str, **options: Any) -> Any:
        if type == "BRPOP":  # the claim's reply is never read and thrown away
            return self._brpop_read(**options)
        return super()._poll_error(type, **options)

    def _deliver_claimed(self, reply: Any, field: str | None) -> bool:
        source, item = bytes_to_str(reply[0])[len(self.global_keyprefix) :], reply[1]
        queue = source.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        payload = self._read_item(queue, source, field, item)
        if queue not in self.connection._callbacks:
            # No consumer for it here any more (cancelled meanwhile): straight back.
            self._give_back_field(field, to_back=False)
            raise Empty()
        tag = payload["properties"]["delivery_tag"]
        self._fields[tag] = str(field)
        try:
            self.connection._deliver(payload, queue)
        finally:
            if queue in self._no_ack_queues:
                self._forget(tag)
        return True

    def _get(self, queue: str) -> Any:
        keys, args = self._claim_args([queue])
        with self._plain_client() as client:
            reply = _eval(client, CLAIM, keys, args)
            self._maybe_update_queues_expire(client, queue)
        if not reply:
            raise Empty()
        source = bytes_to_str(reply[0])[len(self.global_keyprefix) :]
        payload = self._read_item(queue, source, args[1], reply[1])
        self._fields[payload["properties"]["delivery_tag"]] = args[1]
        return payload

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack, **kwargs)
        if message is not None and no_ack:
            self._forget(message.delivery_tag)
        return message

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs.get("no_ack", args[0] if args else False)
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, *args, **kwargs)

    # patch 4: poison

    def _read_item(self, queue: str, source: str, field: str | None, item: bytes) -> Any:
        """The item as kombu's message payload; a malformed one is buried and `Empty` raised."""
        try:
            payload = loads(bytes_to_str(item))
            self.Message(payload, channel=self)  # what kombu does with it next, on our terms
        except Exception as exc:
            self._bury(queue, source, field, item, exc)
            raise Empty() from None
        return payload

    def _bury(
        self, queue: str, source: str, field: str | None, item: bytes, exc: BaseException
    ) -> None:
        dead = f"{queue}{self.dead_letter_suffix}"
        digest = hashlib.sha256(item).hexdigest()
        task_id, task = _identify(item)
        dead_id = task_id or f"poison-{digest[:32]}"
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        letter = dumps(
            {
                "body": base64.b64encode(item).decode("ascii"),
                "content-type": "application/octet-stream",
                "content-encoding": "binary",
                "headers": {
                    "id": dead_id,
                    "task": task,
                    "jobs_core_poison": reason,
                    "jobs_core_source": source,
                    "jobs_core_sha256": digest,
                },
                "properties": {
                    "body_encoding": "base64",
                    "delivery_tag": str(uuid.uuid4()),
                    "delivery_info": {"exchange": "", "routing_key": dead},
                    "delivery_mode": 2,
                    "priority": 0,
                },
            }
        )
        logger.error(
            "malformed item in Redis list %r (task id %s, job %r, %d bytes, sha256 %s, starts %r): "
            "not delivered; kept in %r as message id %s: %s",
            source,
            task_id,
            task,
            len(item),
            digest,
            item[:48],
            dead,
            dead_id,
            reason,
        )
        with self._plain_client() as client:
            _eval(client, BURY, [self.held_key, self._key(dead)], [str(field), letter])

    # acks, requeues, release

    def _forget(self, tag: Any) -> None:
        field = self._fields.pop(tag, None)
        if field is not None:
            with self._plain_client() as client:
                client.hdel(self.held_key, field)

    def _give_back(self, tag: Any, to_back: bool) -> None:
        self._give_back_field(self._fields.pop(tag, None), to_back)

    def _give_back_field(self, field: str | None, to_back: bool) -> None:
        if field is not None:
            with self._plain_client() as client:
                _eval(client, GIVE_BACK, [self.held_key], [field, "1" if to_back else "0"])

    def _release(self) -> None:
        """Every message this consumer holds goes back to its queue; the consumer is gone."""
        if not self._claimed:
            return
        with self._plain_client() as client:
            _eval(client, RELEASE, [self.held_key, self.consumers_key], [self.consumer_id])
        self._fields.clear()
        self._claimed = False

    def close(self) -> None:
        transport = self.connection
        if transport is not None:
            transport.unwatch(self)
        try:
            super().close()
        finally:
            if self._claimed and self.do_restore:
                # Held but never delivered (a claim read while closing, a burial that failed).
                try:
                    self._release()
                except self.connection_errors:
                    pass  # still held: the sweep gives it back once our heartbeat is old
                finally:
                    self._disconnect_pools()


def _identify(item: bytes) -> tuple[str | None, str | None]:
    """The task id and name a malformed item still carries, if any."""
    try:
        data = loads(bytes_to_str(item))
    except Exception:
        return None, None
    headers = data.get("headers") if isinstance(data, dict) else None
    if not isinstance(headers, dict):
        return None, None
    task_id, task = headers.get("id"), headers.get("task")
    return (
        str(task_id) if task_id is not None else None,
        str(task) if task is not None else None,
    )


class _Keeper(threading.Thread):
    """Beats for this connection's consumers; gives back what dead consumers held (patch 2).

    A thread, not the event loop: a busy loop (a long task on the solo pool) would stop the
    heartbeats of a consumer that is alive, and its jobs would run twice. No consumer can beat
    while Redis is away: nothing is swept until Redis has been up, and this keeper has reached
    it, for a whole `heartbeat_timeout`, so that live consumers have beaten again first.
    """

    def __init__(self, channel: RedisChannel) -> None:
        super().__init__(name="jobs-core-redis-keeper", daemon=True)
        self.timeout = float(channel.heartbeat_timeout)
        self.interval = float(channel.heartbeat_interval or self.timeout / 10)
        self.consumers_key = channel.consumers_key
        self.held_prefix = channel.held_prefix
        self._params = channel._connparams(asynchronous=False)
        self._channels: weakref.WeakSet[RedisChannel] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._sweep_after = 0.0

    def watch(self, channel: RedisChannel) -> None:
        with self._lock:
            self._channels.add(channel)

    def unwatch(self, channel: RedisChannel) -> None:
        with self._lock:
            self._channels.discard(channel)

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        client = redis.Redis(connection_pool=redis.ConnectionPool(**self._params))
        try:
            while not self._stopped.is_set():
                self.beat(client)
                self._stopped.wait(self.interval)
        finally:
            client.close()
            client.connection_pool.disconnect()

    def beat(self, client: Any) -> None:
        with self._lock:
            ids = [channel.consumer_id for channel in self._channels]
        try:
            if ids:
                _eval(client, HEARTBEAT, [self.consumers_key], ids)
            uptime = float(client.info("server")["uptime_in_seconds"])
            if monotonic() < self._sweep_after or uptime < self.timeout + self.interval:
                return
            restored, dead = _eval(
                client,
                SWEEP,
                [self.consumers_key],
                [int(self.timeout * 1000), self.held_prefix, SWEEP_BATCH],
            )
        except redis.RedisError as exc:
            logger.debug("Redis consumer heartbeat failed (retrying): %r", exc)
            self._sweep_after = monotonic() + self.timeout + self.interval
            return
        if dead:
            logger.warning(
                "%d Redis consumer(s) missed their heartbeats for %.0f s: %d message(s) they held "
                "went back to their queues",
                dead,
                self.timeout,
                restored,
            )


class _Poller(_kombu_redis.MultiChannelPoller):  # type: ignore[misc]
    """kombu's poller; without an event loop, it wakes up when an idle channel may claim."""

    def get(self, callback: Any, timeout: float | None = None) -> Any:
        now = monotonic()
        waits = [
            channel._next_claim_at - now
            for channel in self._channels
            if channel.active_queues and not channel._in_poll and channel._next_claim_at > now
        ]
        if waits:
            wait = max(min(waits), 0.001)
            timeout = wait if timeout is None else min(timeout, wait)
        return super().get(callback, timeout)


def _noop() -> None:
    pass


class RedisTransport(_kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with patches 1-4 (`broker_transport` = `REDIS_TRANSPORT`)."""

    Channel = RedisChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = _Poller()
        self._keeper: _Keeper | None = None
        self._keeper_lock = threading.Lock()

    def watch(self, channel: RedisChannel) -> None:
        """Beat for `channel` from now on (its first claim starts this connection's keeper)."""
        with self._keeper_lock:
            if self._keeper is None:
                self._keeper = _Keeper(channel)
                self._keeper.start()
            self._keeper.watch(channel)

    def unwatch(self, channel: RedisChannel) -> None:
        with self._keeper_lock:
            if self._keeper is not None:
                self._keeper.unwatch(channel)

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        interval = connection.client.transport_options.get(
            "idle_poll_interval", RedisChannel.idle_poll_interval
        )
        old = getattr(self.cycle, "_claim_tref", None)
        if old is not None:
            old.cancel()
        # The loop sleeps until its next timer: this one brings idle channels back to claim.
        self.cycle._claim_tref = loop.call_repeatedly(float(interval), _noop)

    def close_connection(self, connection: Any) -> None:
        with self._keeper_lock:
            keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.stop()
        super().close_connection(connection)


CLAIM_AND_PUSH = """
local held = redis.call("get", KEYS[2])
if held then return held end
redis.call("set", KEYS[2], ARGV[2], "EX", ARGV[3])
redis.call("lpush", KEYS[1], ARGV[1])
return false
"""
"""A keyed message: claim its idempotency key and push it, in one script run, or return the
id that holds the key and push nothing."""

_claims = threading.local()


def claim_on_publish(dispatch_id: str, scoped_key: str, ttl_seconds: int) -> None:
    """Have the next publish of the task `dispatch_id` (in this thread) claim `scoped_key`."""
    _claims.pending = (dispatch_id, scoped_key, ttl_seconds)
    _claims.held = None


def claimed_by() -> str | None:
    """After a claiming publish: the id that already held the key (nothing was pushed)."""
    held: str | None = getattr(_claims, "held", None)
    _claims.pending = _claims.held = None
    return held


class ProducerChannel(_kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel for producers, with patch 8: a keyed task is pushed by the same
    script run that claims its idempotency key (`claim_on_publish`), so a producer killed
    between claiming and pushing cannot leave a key claimed for a task never sent (C32), and a
    keyed dispatch costs one round trip, not two."""

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        pending = getattr(_claims, "pending", None)
        task_id = (message.get("headers") or {}).get("id")
        if pending is None or pending[0] != task_id or (self._expires and queue in self._expires):
            super()._put(queue, message, **kwargs)
            return
        dispatch_id, key, ttl = pending  # kept until claimed_by(): a retried publish claims too
        queue_key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client:
            held = client.eval(CLAIM_AND_PUSH, 2, queue_key, key, dumps(message), dispatch_id, ttl)
        _claims.held = held.decode() if isinstance(held, bytes) else None


class ProducerRedisTransport(_kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with `ProducerChannel` (`PRODUCER_TRANSPORT`)."""

    Channel = ProducerChannel


PRODUCER_TRANSPORT = f"{__name__}:ProducerRedisTransport"


AMQP_CONSUMER_TIMEOUT = 1800.0
"""RabbitMQ's default `consumer_timeout`, in seconds (30 min since 3.8.17)."""


def _is_amqp(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://", "pyamqp://", "librabbitmq://"))


def holding_limit(
    broker_url: str, visibility_timeout: float, consumer_timeout: float = AMQP_CONSUMER_TIMEOUT
) -> float:
    """Seconds a worker may hold a message unacked on this broker (patch 6).

    On Redis, `visibility_timeout` as given; on AMQP, no more than RabbitMQ's
    `consumer_timeout`, after which the broker closes the channel and the worker stops.
    """
    if _is_amqp(broker_url):
        return min(visibility_timeout, consumer_timeout)
    return visibility_timeout


def _is_plain_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


TESTED_KOMBU = (5, 7)
"""The kombu minor version whose Redis transport internals the patches were verified on."""


def _kombu_minor() -> tuple[int, ...]:
    import kombu

    return tuple(int(part) for part in str(kombu.__version__).split(".")[:2])


def install_worker_patches(app: Any) -> None:
    """Put the patches on a worker's Celery `app` (after its configuration is complete).

    On a `redis://` or `rediss://` broker the app gets the patched transport (unless it names
    its own `broker_transport`); on any broker, Celery's consumer with patch 5. With a kombu
    other than the one the transport patch was verified on, the worker keeps kombu's own
    transport and says so.
    """
    conf = app.conf
    url = str(conf.broker_url or "")
    if _is_plain_redis(url) and not conf.broker_transport and _kombu_minor() != TESTED_KOMBU:
        logger.warning(
            "kombu %s is not the version the Redis transport patch was verified on (%s): this "
            "worker keeps kombu's own transport, which can lose a job when a worker is killed "
            "or Redis restarts (docs/reliability-celery.md)",
            ".".join(map(str, _kombu_minor())),
            ".".join(map(str, TESTED_KOMBU)),
        )
    elif _is_plain_redis(url) and not conf.broker_transport:
        conf.broker_transport = REDIS_TRANSPORT
        if url.startswith("rediss://") and not conf.broker_use_ssl:
            # What kombu does for `rediss://` without `broker_use_ssl` (it warns; so do we):
            # a transport named by class does not get it.
            logger.warning("rediss:// broker without broker_use_ssl: certificates are not checked")
            conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_NONE}
    if conf.worker_consumer in (None, "celery.worker.consumer:Consumer"):
        conf.worker_consumer = CONSUMER


__all__ = [
    "AMQP_CONSUMER_TIMEOUT",
    "CONSUMER",
    "DEAD_LETTER_SUFFIX",
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "REDIS_TRANSPORT",
    "Consumer",
    "RedisChannel",
    "RedisTransport",
    "held_count",
    "holding_limit",
    "install_worker_patches",
]


MALFORMED_MESSAGE_ERRORS: tuple[type[BaseException], ...] = (
    DecodeError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
)
"""What Celery's consumer raises while reading a malformed message, before any run."""

STRATEGY = f"{__name__}:malformed_messages_are_invalid"
"""The `Strategy=` option of a task that uses the patched strategy."""


def malformed_messages_are_invalid(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """Celery's default task strategy, with a malformed message turned into `InvalidTaskError`.

    Upstream, Celery reads a message's body in the consumer thread: a body of the wrong shape
    (not `[args, kwargs, embed]`) raised `ValueError` out of the consumer loop ("Unrecoverable
    error": the worker stopped, and so did every worker that fetched the message again), and a
    body that is not JSON was acked and dropped. As `InvalidTaskError`, Celery logs the message,
    rejects it without a retry and sends `task_rejected`, where the adapter keeps it.
    """
    from celery.worker.strategy import default  # worker side only

    handle = default(task, app, consumer, **options)

    def task_message_handler(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return handle(message, body, *args, **kwargs)
        except InvalidTaskError:
            raise
        except MALFORMED_MESSAGE_ERRORS as exc:
            headers = getattr(message, "headers", None) or {}
            raise InvalidTaskError(
                f"malformed message for job {task.name!r} (task id {headers.get('id')}): "
                f"{type(exc).__name__}: {str(exc)[:200]}"
            ) from exc

    return task_message_handler


PATIENT_PUBLISH = {
    "max_retries": int(BROKER_AWAY_SECONDS / 2),
    "interval_start": 0.5,
    "interval_step": 0.5,
    "interval_max": 2,
}
"""A worker's retry or resend waits `BROKER_AWAY_SECONDS` for the broker (2 s between tries)."""


def retry_patiently(task: Any, args: Any, kwargs: Any, **options: Any) -> None:
    """`task.retry(args, kwargs, **options)`, waiting for a broker that is away (patch 9)."""
    try:
        raise task.retry(args, kwargs, retry_policy=PATIENT_PUBLISH, **options)
    except Reject as dropped:  # still away: put the message back rather than drop it
        raise Reject(dropped.reason, requeue=True) from dropped
