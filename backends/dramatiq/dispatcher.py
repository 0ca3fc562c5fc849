"""The Dramatiq producer: a dispatch is a message for the actor named after its job (the payload
its one argument, the dispatch id its message id), enqueued with Dramatiq's own
`broker.enqueue`; several go to Redis in one transaction."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker as _RedisBroker
from dramatiq.common import current_millis, dq_name
from dramatiq.encoder import JSONEncoder

from jobs_core.backend import broker_dispatcher_factory
from jobs_core.config import redact_url
from jobs_core.dispatch.dispatcher import AlreadyClaimed, BaseDispatcher, PreparedJob
from jobs_core.dispatch.idempotency import (
    IDEMPOTENCY_TTL_SECONDS,
    IdempotencyStore,
    idempotency_store_for,
    is_redis_url,
    redis_client,
    scoped_key,
)

from .broker import BACKEND, amqp_broker, millis
from .fixes import ClaimingDispatch, EncodedMessage

RedisBroker: Any = _RedisBroker


class DramatiqDispatcher(BaseDispatcher):
    """Sends jobs to Dramatiq workers through the broker at `broker_url`, on `queue`."""

    backend_name = BACKEND

    def __init__(
        self,
        broker_url: str,
        queue: str = "default",
        *,
        idempotency: IdempotencyStore | None = None,
        idempotency_url: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(idempotency=idempotency, **options)
        self.broker_url = broker_url
        self.queue = queue
        self.client: redis.Redis | None = None
        self.script: ClaimingDispatch | None = None
        if is_redis_url(broker_url):
            self.client = redis_client(broker_url, self.timeout)
            self.broker = RedisBroker(client=self.client, middleware=[], maintenance_chance=0)
            if idempotency is None and idempotency_url is None:  # keys live beside the queue
                self.script = ClaimingDispatch(self.broker, IDEMPOTENCY_TTL_SECONDS)
                self.broker.scripts["dispatch"] = self.script
                self.claims_when_sending = True
        else:
            self.broker = amqp_broker(broker_url, middleware=[])
        self.broker.declare_queue(queue)
        if idempotency is None:
            shared = self.client if idempotency_url is None else None
            url = idempotency_url or broker_url
            self.idempotency = idempotency_store_for(url, self.timeout, what=BACKEND, client=shared)

    def _message(
        self, prepared: PreparedJob, queue: str, options: dict[str, Any]
    ) -> dramatiq.Message[Any]:
        fields: dict[str, Any] = {"queue_name": queue, "actor_name": prepared.name}
        fields.update(kwargs={}, options=options, message_id=prepared.dispatch_id)
        if type(dramatiq.get_encoder()) is JSONEncoder:  # the payload's JSON goes in as it is
            return EncodedMessage(args=(), body=prepared.body, **fields)
        return dramatiq.Message(args=(prepared.data,), **fields)

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str | AlreadyClaimed]:
        if len(jobs) > 1 and self.client is not None:
            return self._send_in_one_transaction(jobs)
        results: list[str | AlreadyClaimed] = []
        for prepared in jobs:
            wait = prepared.delay_seconds()
            self._claim_with(prepared)
            message = self._message(prepared, self.queue, {})
            self.broker.enqueue(message, delay=millis(wait) if wait > 0 else None)
            held = self.script.held if self.script is not None else None
            results.append(AlreadyClaimed(held) if held else prepared.dispatch_id)
        return results

    def _claim_with(self, prepared: PreparedJob) -> None:
        """Have the next enqueue claim `prepared`'s idempotency key in the same script run."""
        if self.script is not None:
            key = prepared.idempotency_key
            claim = (scoped_key(prepared.name, key), prepared.dispatch_id) if key else None
            self.script.claim = claim

    def _send_in_one_transaction(self, jobs: Sequence[PreparedJob]) -> list[str | AlreadyClaimed]:
        """Dramatiq's own enqueue script, the call its `enqueue` ends in, on a broker whose client
        is a Redis transaction: the calls (claiming keys as they enqueue) go to Redis in one
        round trip, all or none. Each message is made once, as `enqueue` would leave it."""
        assert self.client is not None
        pipe = self.client.pipeline(transaction=True)
        batch = RedisBroker(client=pipe, middleware=[], maintenance_chance=0)
        batch.broker_id = self.broker.broker_id  # one producer in the heartbeats, not one a batch
        batch.scripts["maxstack"] = self.broker.scripts["maxstack"]  # a query, not a write
        if self.script is not None:
            batch.scripts["dispatch"] = functools.partial(self.script, client=pipe)
        enqueue = batch.do_enqueue
        for prepared in jobs:
            queue, wait = self.queue, prepared.delay_seconds()
            options: dict[str, Any] = {"redis_message_id": secrets.token_hex(16)}
            if wait > 0:
                options["eta"], queue = current_millis() + millis(wait), dq_name(queue)
            self._claim_with(prepared)
            message = self._message(prepared, queue, options)
            enqueue(queue, options["redis_message_id"], message.encode())
        replies = pipe.execute()
        return [
            AlreadyClaimed(reply.decode()) if isinstance(reply, bytes) else p.dispatch_id
            for p, reply in zip(jobs, replies)
        ]

    def close(self) -> None:
        self.broker.close()
        super().close()

    def __repr__(self) -> str:
        url = redact_url(self.broker_url)
        return f"DramatiqDispatcher(broker_url={url!r}, queue={self.queue!r})"


create_dispatcher = broker_dispatcher_factory(DramatiqDispatcher, BACKEND)
