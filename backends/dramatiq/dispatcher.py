"""The Dramatiq producer: a dispatch is a message for the actor named after its job (the payload
its one argument, the dispatch id its message id), enqueued with Dramatiq's own
`broker.enqueue`. On Redis, several jobs, and a keyed job with the claim of its key, go to Redis
in one transaction: Dramatiq's broker built on a redis-py pipeline (`RedisBroker(client=...)`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dramatiq
import pydantic_core
import redis
from dramatiq.brokers.redis import RedisBroker as _RedisBroker
from dramatiq.encoder import JSONEncoder

from jobs_core.backend import broker_dispatcher_factory
from jobs_core.config import redact_url
from jobs_core.dispatch.dispatcher import BaseDispatcher
from jobs_core.dispatch.idempotency import (
    IdempotencyStore,
    RedisIdempotencyStore,
    idempotency_store_for,
    is_redis_url,
    redis_client,
)
from jobs_core.dispatch.prepared import PreparedJob
from jobs_core.hooks import HEADERS_KEY
from jobs_core.steps.stores import waits_for_producer

from .broker import BACKEND, amqp_broker, millis

RedisBroker: Any = _RedisBroker


@dataclass(frozen=True)
class EncodedMessage(dramatiq.Message[Any]):
    """A message whose one argument is `body`, the payload's JSON as the core serialised it:
    `encode` writes what Dramatiq's `JSONEncoder` writes for `args=(payload,)`, without parsing
    the JSON back into Python and encoding it again with the standard library (at 10 KB a
    third of a dispatch, at 200 KB four fifths: docs/performance.md, `constructs.dramatiq_message`).
    Workers decode it as any message; `copy` (Dramatiq's enqueue, its delays) keeps `body`."""

    body: bytes = b"null"

    def encode(self) -> bytes:
        envelope = pydantic_core.to_json(
            {
                "queue_name": self.queue_name,
                "actor_name": self.actor_name,
                "kwargs": self.kwargs,
                "options": self.options,
                "message_id": self.message_id,
                "message_timestamp": self.message_timestamp,
            }
        )
        return b'{"args":[' + self.body + b"]," + envelope[1:]


class DramatiqDispatcher(BaseDispatcher):
    """Sends jobs to Dramatiq workers through the broker at `broker_url`, on `queue`.

    Idempotency keys live in the broker's Redis, claimed in the transaction that enqueues the
    job; on RabbitMQ, in `idempotency_url`'s Redis (claimed before the enqueue, confirmed
    after), else in this process only.
    """

    backend_name = BACKEND

    def __init__(
        self,
        broker_url: str | None,
        queue: str = "default",
        *,
        idempotency: IdempotencyStore | None = None,
        idempotency_url: str | None = None,
        broker: Any = None,
        **options: Any,
    ) -> None:
        super().__init__(idempotency=idempotency, **options)
        self.broker_url = broker_url or ""
        self.queue = queue
        self.client: redis.Redis | None = None
        if broker is not None:  # a worker's own broker (it sends JOB_FAILED through it)
            self.broker = broker
            self.client = broker.client if isinstance(broker, RedisBroker) else None
        elif broker_url is None:
            raise TypeError("DramatiqDispatcher needs a broker_url (or a broker)")
        elif is_redis_url(broker_url):
            self.client = redis_client(broker_url, self.timeout)
            self.broker = RedisBroker(client=self.client, middleware=[], maintenance_chance=0)
        else:
            self.broker = amqp_broker(broker_url, middleware=[])
        self.broker.declare_queue(queue)
        if idempotency is None:
            shared = self.client if idempotency_url is None else None
            url = idempotency_url or self.broker_url
            if shared is not None and broker is not None:  # the worker's Redis broker
                self.idempotency = RedisIdempotencyStore(
                    shared, pending_seconds=2 * self.timeout + 1
                )
            else:
                self.idempotency = idempotency_store_for(
                    url, self.timeout, what=BACKEND, client=shared
                )
        if broker is None:
            self.waits = waits_for_producer(self.broker_url, self.client)  # C42
        self.enqueues_in_store_transaction = (
            isinstance(self.idempotency, RedisIdempotencyStore)
            and self.idempotency.client is self.client
        )

    def _message(self, prepared: PreparedJob) -> dramatiq.Message[Any]:
        fields: dict[str, Any] = {
            "queue_name": self.queue,
            "actor_name": prepared.name,
            "kwargs": {},
            "options": {HEADERS_KEY: dict(prepared.headers)} if prepared.headers else {},
            "message_id": prepared.dispatch_id,
        }
        if self.broker.middleware or type(dramatiq.get_encoder()) is not JSONEncoder:
            # A middleware may read `args` at enqueue; another encoder writes another format.
            return dramatiq.Message(args=(prepared.data,), **fields)
        return EncodedMessage(args=(), body=prepared.body, **fields)

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        if len(jobs) > 1 and self.client is not None:  # one transaction: all or none
            transaction = self.client.pipeline(transaction=True)
            self._enqueue_in(transaction, jobs)
            transaction.execute()
        else:
            for prepared in jobs:
                self._enqueue(self.broker, prepared)
        return [p.dispatch_id for p in jobs]

    def _enqueue_in(self, transaction: Any, jobs: Sequence[PreparedJob]) -> None:
        """Dramatiq's own enqueue, on a broker whose client is the Redis transaction."""
        batch = RedisBroker(client=transaction, middleware=[], maintenance_chance=0)
        batch.broker_id = self.broker.broker_id  # one producer in the heartbeats, not one a batch
        batch.scripts["maxstack"] = self.broker.scripts["maxstack"]  # a query, not a write
        for prepared in jobs:
            self._enqueue(batch, prepared)

    def _enqueue(self, broker: Any, prepared: PreparedJob) -> None:
        wait = prepared.delay_seconds()
        broker.enqueue(self._message(prepared), delay=millis(wait) if wait > 0 else None)

    def close(self) -> None:
        self.broker.close()
        super().close()

    def __repr__(self) -> str:
        url = redact_url(self.broker_url)
        return f"DramatiqDispatcher(broker_url={url!r}, queue={self.queue!r})"


create_dispatcher = broker_dispatcher_factory(DramatiqDispatcher, BACKEND)
