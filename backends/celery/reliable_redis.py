"""The reliable Redis transport for Celery: an opt-in replacement for kombu's Redis transport.

Turn it on with `JOBS_CELERY_TRANSPORT=reliable-redis` (or `create_celery_app(...,
transport="reliable-redis")`) after `pip install 'jobs-core[celery-reliable-redis]'`, which pins
the kombu it was verified on; on another kombu the worker refuses to start. Producers need
nothing: they push as kombu does. What it changes, against kombu's own transport:

1. **Atomic fetch** (celery/kombu#305, open since 2014; celery/celery#4354). kombu takes a
   message off the queue with `BRPOP` and records it as unacked (`HSET unacked`) in a second
   command: a worker killed between the two, or a Redis that stops after serving the `BRPOP`,
   loses that message before it ever ran. Here a message moves in one step into a hash owned by
   the consuming channel (`<unacked_key>:held:<consumer id>`): by one Lua script, or, for an
   idle consumer of one queue, by a blocking `BLMOVE` into the consumer's landing list
   (`<unacked_key>:landing:<consumer id>`, Redis 6.2 or later) from which the next script
   moves it into the hash. At every instant the message is in its queue or held by a known
   consumer (in its held hash or its landing list). Tests: tests/celery/test_reliable_redis.py.
2. **Dead consumers, not old messages** (kombu's `visibility_timeout`). kombu gives a message
   back once it has been unacked for `visibility_timeout`, alive or dead consumer alike: a
   killed worker's jobs waited hours, and a message held on purpose (an ETA waiting in a worker)
   ran twice once it was older than that. Each process that consumes beats for its consumers in
   a sorted set (`<unacked_key>:consumers`, Redis server time) from a thread of its own, and
   gives the messages held by any consumer that missed `heartbeat_timeout` (15 s), in its held
   hash or its landing list, back to the front of their queues; a live consumer keeps what it
   holds for as long as it needs.
3. **Closing a collected connection** (the `AttributeError` of celery/kombu#582): as
   `jobs_core.backends.celery.fixes` fix 4, whose channel this one extends.
4. **Poison list items** (celery/celery#1113, celery/celery#4308). An item on the queue's list
   that is not JSON raised out of the transport and stopped the worker; JSON of the wrong shape
   (no `properties`) raised `KeyError`, which Celery took for a lost connection, and the item
   vanished. Such an item is moved, in one script, from the consumer's held hash to
   `<queue>.dead` (wrapped as a kombu message whose body is the item as it came) and logged
   with its source list, size, SHA-256 and id. Tests: tests/poison/test_poison.py (`raw-*`).

**Idle consumers.** An idle consumer of one queue blocks in Redis, as kombu's `BRPOP` does, and
takes a job the moment it is pushed: `BLMOVE <queue> <its landing list> RIGHT LEFT
<idle_block_timeout>` (a Lua script cannot block). Each time the block times out
(`idle_block_timeout`, 1 s, a transport option) it claims once over all the queue's lists, then
blocks again: a message sent with a priority other than 0 goes to another list (kombu's
priority steps) and waits up to `idle_block_timeout` for a blocked consumer. An idle consumer of
several queues polls instead: it claims every `idle_poll_interval` (0.1 s, so a job waits up to
that), as Redis cannot block on a move out of one of several lists. So does every consumer
while the Redis server is older than 6.2 (no `BLMOVE`: each connection's heartbeat thread reads
the version from `INFO server` at every beat) or refuses `BLMOVE` (a proxy, an ACL). Closing a
channel waits for the `BLMOVE` in flight, at most `idle_block_timeout`, as kombu's close waits
for its `BRPOP`; what it took goes back to the front of its queue.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import threading
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from time import monotonic
from typing import Any

import redis
from kombu.transport import redis as _redis_transport
from kombu.transport import virtual as _virtual_transport
from kombu.utils import encoding as _encoding
from kombu.utils import json as _json

from jobs_core.errors import JobConfigError

from .fixes import RedisChannel as StockFixesChannel

# kombu's own names, untyped upstream.
_kombu_redis: Any = _redis_transport
_virtual: Any = _virtual_transport
bytes_to_str: Any = _encoding.bytes_to_str
dumps: Any = _json.dumps
loads: Any = _json.loads

logger = logging.getLogger("jobs_core.celery")

REDIS_TRANSPORT = f"{__name__}:RedisTransport"
"""`broker_transport` of a worker that opted in: this module's transport."""

DEAD_LETTER_SUFFIX = ".dead"
"""A poison item on queue `q` is kept in the list `q.dead` (as `dead_letter_queue(q)`)."""

DEFAULT_HEARTBEAT_TIMEOUT = 15.0
"""Seconds without a heartbeat after which a consumer's held messages go back to their queues."""

DEFAULT_IDLE_POLL_INTERVAL = 0.1
"""Seconds an idle consumer of several queues waits before it looks for work again."""

DEFAULT_IDLE_BLOCK_TIMEOUT = 1.0
"""Seconds an idle consumer of one queue blocks in `BLMOVE` before it claims over all the
queue's lists (its priority levels too) and blocks again."""

BLMOVE_SINCE = (6, 2)
"""The Redis server version that has `BLMOVE`; on an older one every idle consumer polls."""

SWEEP_BATCH = 100
"""Dead consumers handled by one sweep script (the next sweep takes the rest)."""

# One entry of a held hash: "<length of the source key>:<source key><item as it came>".
#
# A consumer's landing list (`<unacked_key>:landing:<consumer id>`) is where its `BLMOVE` puts
# the item it took; the next claim moves it into the held hash. The list it came from is kept
# in the hash `<unacked_key>:landing-sources` (field: the consumer id), written by the claim
# that found nothing just before the `BLMOVE` was sent, so that a sweep or a release can give
# back what a consumer had landed and not yet claimed.
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
-- Everything in a landing list back to the front of its source list, oldest (rightmost)
-- first in line; the list and its source record go. `fallback`: the source the consumer
-- itself names, for a record already swept. Without any source the items stay where they are.
local function give_back_landed(landing, sources, id, fallback)
    local source = redis.call('HGET', sources, id)
    if not source and fallback ~= '' then source = fallback end
    redis.call('HDEL', sources, id)
    if not source then return 0 end
    local items = redis.call('LRANGE', landing, 0, -1)
    for i = 1, #items do redis.call('RPUSH', source, items[i]) end
    redis.call('DEL', landing)
    return #items
end
"""

CLAIM = (
    _LUA_HELPERS
    + """
-- KEYS[1] this consumer's held hash, KEYS[2] the consumers set, KEYS[3] its landing list,
-- KEYS[4] the landing sources hash, KEYS[5..] the lists to claim from, in order.
-- ARGV[1] consumer id, ARGV[2] the field for the item taken, ARGV[3] the list the items in
-- the landing list came from ('' : leave the landing list alone), ARGV[4] the list this
-- consumer blocks on next if nothing is found ('' : it does not block).
redis.call('ZADD', KEYS[2], now_ms(), ARGV[1])
local function hold(source, item)
    redis.call('HSET', KEYS[1], ARGV[2], string.len(source) .. ':' .. source .. item)
    return {source, item}
end
if ARGV[3] ~= '' then
    local item = redis.call('RPOP', KEYS[3])
    if item then return hold(ARGV[3], item) end
end
for i = 5, #KEYS do
    local item = redis.call('RPOP', KEYS[i])
    if item then return hold(KEYS[i], item) end
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], ARGV[1], ARGV[4]) end
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
-- KEYS[1] held hash, KEYS[2] consumers set, KEYS[3] landing list, KEYS[4] landing sources
-- hash; ARGV[1] consumer id, ARGV[2] the landing list's source as the consumer knows it (''),
-- ARGV[3] '1' if a BLMOVE of this consumer may still land an item (its reply never read).
-- Everything back; gone. Unless a BLMOVE may still land: then the landing list and the
-- consumer stay, and the sweep gives back what is there once its heartbeats have stopped.
local n = give_back_all(KEYS[1])
if ARGV[3] == '1' then return n end
n = n + give_back_landed(KEYS[3], KEYS[4], ARGV[1], ARGV[2])
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
-- KEYS[1] consumers set, KEYS[2] landing sources hash; ARGV[1] timeout ms, ARGV[2] held hash
-- prefix, ARGV[3] batch, ARGV[4] landing list prefix.
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms() - tonumber(ARGV[1]),
                        'LIMIT', 0, tonumber(ARGV[3]))
local restored = 0
for _, id in ipairs(dead) do
    restored = restored + give_back_all(ARGV[2] .. id)
    restored = restored + give_back_landed(ARGV[4] .. id, KEYS[2], id, '')
    redis.call('ZREM', KEYS[1], id)
end
return {restored, #dead}
"""
)


def held_count(client: Any, unacked_key: str = "unacked") -> int:
    """Messages held by consumers right now (delivered and not yet acked, or landed by a
    `BLMOVE` and not yet claimed): for tests and operators."""
    held = sum(int(client.hlen(key)) for key in client.scan_iter(f"{unacked_key}:held:*"))
    landed = sum(int(client.llen(key)) for key in client.scan_iter(f"{unacked_key}:landing:*"))
    return held + landed


def _eval(client: Any, script: str, keys: list[str], args: list[Any]) -> Any:
    return client.execute_command("EVAL", script, len(keys), *keys, *args)


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


class RedisChannel(StockFixesChannel):
    """kombu's Redis channel with the atomic fetch, held hash, poison burial (patches 1, 2
    and 4; patch 3, a collected connection is a lost one, is the stock transport's fix)."""

    QoS = HeldQoS

    heartbeat_timeout = DEFAULT_HEARTBEAT_TIMEOUT
    heartbeat_interval: float | None = None
    """Seconds between heartbeats and sweeps; default a tenth of `heartbeat_timeout`."""
    idle_poll_interval = DEFAULT_IDLE_POLL_INTERVAL
    idle_block_timeout = DEFAULT_IDLE_BLOCK_TIMEOUT
    dead_letter_suffix = DEAD_LETTER_SUFFIX

    from_transport_options = (
        *_kombu_redis.Channel.from_transport_options,
        "heartbeat_timeout",
        "heartbeat_interval",
        "idle_poll_interval",
        "idle_block_timeout",
        "dead_letter_suffix",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.consumer_id = uuid.uuid4().hex
        self._fields: dict[Any, str] = {}
        self._field_ids = itertools.count(1)
        self._claim_field: str | None = None
        self._next_claim_at = 0.0
        self._claimed = False
        # The command in flight on the poll connection: "EVAL" (a claim) or "BLMOVE".
        self._in_flight = "EVAL"
        # The list the claim in flight asked to block on if it found nothing, and the list
        # the next poll blocks on (set when that claim found nothing).
        self._claim_block_on = ""
        self._block_on = ""
        # The list the last BLMOVE took from: where what is in the landing list came from.
        self._landing_source = ""
        self._blmove_unread = False  # a BLMOVE was sent and its reply not read (it may land)
        self._blmove_refused = False  # the server has no BLMOVE, or refuses it to us
        self._no_ack_queues: set[str] = set()
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

    @property
    def landing_key(self) -> str:
        return self._key(f"{self.unacked_key}:landing:{self.consumer_id}")

    @property
    def landing_prefix(self) -> str:
        return self._key(f"{self.unacked_key}:landing:")

    @property
    def landing_sources_key(self) -> str:
        return self._key(f"{self.unacked_key}:landing-sources")

    def _claim_args(
        self, queues: list[str], landed: str = "", block_on: str = ""
    ) -> tuple[list[str], list[Any]]:
        """CLAIM's keys and arguments: claim from `queues` (every priority level), after what
        the landing list holds if `landed` (its source list) is given."""
        lists = [self._key(self._q_for_pri(q, pri)) for pri in self.priority_steps for q in queues]
        field = str(next(self._field_ids))
        if not self._claimed:
            self._claimed = True
            self.connection.watch(self)
        keys = [self.held_key, self.consumers_key, self.landing_key, self.landing_sources_key]
        return [*keys, *lists], [self.consumer_id, field, landed, block_on]

    def _blocking_list(self, queues: list[str]) -> str:
        """The list an idle consumer of `queues` blocks on ('' : it polls).

        Only for one queue: Redis has no blocking move out of one of several lists. It is the
        queue's list for priority 0 (kombu's default); its other priority levels are claimed
        each time the block times out. Only on a Redis with BLMOVE, as this connection's keeper
        found it (no I/O here, in the event loop): until its first heartbeat, the consumer
        polls."""
        if len(queues) != 1 or self._blmove_refused:
            return ""
        transport = self.connection
        keeper = getattr(transport, "_keeper", None) if transport is not None else None
        if keeper is None or not keeper.server_has_blmove:
            return ""
        return self._key(self._q_for_pri(queues[0], 0))

    def _on_connection_disconnect(self, connection: Any) -> None:
        self._blmove_refused = False  # a reconnect may reach another server
        super()._on_connection_disconnect(connection)

    @contextmanager
    def _plain_client(self) -> Iterator[Any]:
        # Not kombu's client class: with `global_keyprefix` it would prefix HDEL's key twice.
        yield redis.Redis(connection_pool=self.pool)

    # patch 1: the atomic fetch, driven by kombu's event loop as BRPOP was.
    #
    # An idle consumer of several queues sends a claim (CLAIM) every `idle_poll_interval`.
    # An idle consumer of one queue alternates: a claim over all the queue's lists that finds
    # nothing (and records the list it blocks on next as its landing list's source), then
    # `BLMOVE <queue list> <landing list> RIGHT LEFT <idle_block_timeout>`. When the BLMOVE
    # returns an item, a claim moves it from the landing list into the held hash (the same
    # script, run at once) and it is delivered; when it times out, the next claim looks at the
    # priority lists too. Either way the item is in its queue or held by a known consumer.

    def _brpop_start(self, timeout: Any = None) -> None:
        if self._next_claim_at > monotonic():
            return  # idle: the transport's timer brings the loop back when it is time
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        connection = self.client.connection
        blocking_list = self._blocking_list(queues)
        if blocking_list and blocking_list == self._block_on:
            # The last claim found nothing and recorded this list: block on it.
            self._block_on = ""
            self._landing_source = blocking_list
            self._blmove_unread = True
            block = float(self.idle_block_timeout)
            self._in_flight = "BLMOVE"
            self._in_poll = connection
            # kombu's health check drops a poll connection whose reply is overdue by more than
            # `brpop_timeout` + `health_check_interval`: account for a longer block.
            self._brpop_sent_at = monotonic() + max(0.0, block - float(self.brpop_timeout))
            connection.send_command(
                "BLMOVE", blocking_list, self.landing_key, "RIGHT", "LEFT", f"{block:g}"
            )
            return
        keys, args = self._claim_args(queues, self._landing_source, blocking_list)
        self._claim_field = args[1]
        self._claim_block_on = blocking_list
        self._in_flight = "EVAL"
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
            command = self._in_flight
            try:
                reply = self.client.parse_response(connection, command, **options)
            except self.connection_errors:
                connection.disconnect()
                raise
            except self.ResponseError as exc:
                if command == "BLMOVE":
                    self._blmove_unread = False  # refused: nothing moved
                    if _unknown_or_denied(exc):  # a proxy or an ACL without it
                        logger.warning("Redis refused BLMOVE (%s): this consumer polls", exc)
                        self._blmove_refused = True
                        raise Empty() from None
                # Refused now (out of memory, read-only replica): claim again later.
                logger.exception("Redis refused to hand out a message; retrying in 1 s")
                self._next_claim_at = monotonic() + 1.0
                raise Empty() from None
            if command == "BLMOVE":
                self._blmove_unread = False
                return self._landed(reply)
            field, self._claim_field = self._claim_field, None
            if not reply:
                if self._claim_block_on:
                    self._block_on = self._claim_block_on  # block at once, no wait
                else:
                    self._next_claim_at = monotonic() + self.idle_poll_interval
                raise Empty()
            self._next_claim_at = 0.0
            return self._deliver_claimed(reply, field)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _landed(self, reply: Any) -> bool:
        """The reply of a BLMOVE: nil when it timed out (the next poll claims), else the item
        it moved into the landing list, which a claim moves into the held hash and delivers."""
        if reply is None or self._closing:
            # Closing: what landed stays in the landing list, and the release gives it back.
            raise Empty()
        keys, args = self._claim_args([], self._landing_source)
        with self._plain_client() as client:
            claimed = _eval(client, CLAIM, keys, args)
        if not claimed:
            raise Empty()  # not there any more (a claim in between took it)
        return self._deliver_claimed(claimed, args[1])

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
        keys, args = self._claim_args([queue])  # not the landing list: it may be another queue's
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
        keys = [self.held_key, self.consumers_key, self.landing_key, self.landing_sources_key]
        args = [self.consumer_id, self._landing_source, "1" if self._blmove_unread else "0"]
        with self._plain_client() as client:
            _eval(client, RELEASE, keys, args)
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


def _unknown_or_denied(exc: BaseException) -> bool:
    """Whether Redis refused a command for good: unknown to it, or not allowed to this user."""
    text = str(exc).lower()
    return "unknown command" in text or text.startswith("noperm")


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
        self.landing_prefix = channel.landing_prefix
        self.landing_sources_key = channel.landing_sources_key
        self._params = channel._connparams(asynchronous=False)
        self._channels: weakref.WeakSet[RedisChannel] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._sweep_after = 0.0
        self.server_has_blmove = False
        """Whether the Redis server is 6.2 or later (BLMOVE), as found by the last heartbeat."""

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
            server = client.info("server")
            self.server_has_blmove = _version(server.get("redis_version")) >= BLMOVE_SINCE
            uptime = float(server["uptime_in_seconds"])
            if monotonic() < self._sweep_after or uptime < self.timeout + self.interval:
                return
            restored, dead = _eval(
                client,
                SWEEP,
                [self.consumers_key, self.landing_sources_key],
                [int(self.timeout * 1000), self.held_prefix, SWEEP_BATCH, self.landing_prefix],
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


def _version(text: Any) -> tuple[int, ...]:
    """`6.2.14` as (6, 2); anything else as ()."""
    parts = str(text).split(".")[:2]
    return tuple(int(part) for part in parts) if all(p.isdigit() for p in parts) else ()


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


TESTED_KOMBU = (5, 7)
"""The kombu minor version whose Redis transport internals this transport was verified on."""

TRANSPORT = REDIS_TRANSPORT


def _kombu_minor() -> tuple[int, ...]:
    import kombu

    return tuple(int(part) for part in str(kombu.__version__).split(".")[:2])


def check_kombu() -> None:
    """Refuse, loudly, a kombu whose Redis transport internals this transport was not verified
    on: its subclasses reach into them, and a silent fallback would lose what it promises."""
    found = _kombu_minor()
    if found != TESTED_KOMBU:
        raise JobConfigError(
            f"the reliable Redis transport was verified on kombu "
            f"{'.'.join(map(str, TESTED_KOMBU))}.x and this is kombu "
            f"{'.'.join(map(str, found))}: pip install 'jobs-core[celery-reliable-redis]' "
            "(it pins kombu), or use kombu's own transport (JOBS_CELERY_TRANSPORT=kombu) or "
            "RabbitMQ"
        )
