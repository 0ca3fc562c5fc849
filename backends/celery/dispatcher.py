"""The Celery producer: a dispatch is a task message named after its job, with the payload as its
one argument and the dispatch id as its task id, published through Celery's own message layer.

On RabbitMQ each publish waits for the broker's confirm (a receipt means the message is in the
quorum queue), and a delay is kept by the broker (native delayed delivery). On Redis a delay is
held by a worker, so one longer than the visibility timeout allows is refused.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import pydantic_core
from celery import Celery
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    calculate_routing_key,
    declare_native_delayed_delivery_exchanges_and_queues,
    level_name,
)

from jobs_core.backend import broker_dispatcher_factory
from jobs_core.config import redact_url
from jobs_core.dispatch.dispatcher import BaseDispatcher
from jobs_core.dispatch.idempotency import (
    IdempotencyStore,
    idempotency_store_for,
    is_redis_url,
)
from jobs_core.dispatch.prepared import PreparedJob
from jobs_core.hooks import HEADERS_KEY
from jobs_core.jobs.payload import PAYLOAD_MASK
from jobs_core.steps.stores import waits_for_producer

from .broker import (
    DEFAULT_DELIVERY_LIMIT,
    DEFAULT_VISIBILITY_TIMEOUT,
    Exchange,
    celery_conf,
    dead_letter_entity,
    is_amqp,
    longest_hold,
)

BACKEND = "celery"

MESSAGE_OPTIONS = {"argsrepr": f"({PAYLOAD_MASK},)", "kwargsrepr": "{}", "ignore_result": True}
"""What Flower and `celery inspect` show of a task's arguments: never the payload (C23)."""

PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
"""One retry after a reconnect: with each attempt bounded by a third of the dispatch timeout,
a dead broker fails within the dispatch timeout (C7)."""

DELAYED_EXCHANGE = Exchange(level_name(27), type="topic")
"""Where native delayed delivery takes a delayed message in (its longest level)."""


class CeleryDispatcher(BaseDispatcher):
    """Sends jobs to Celery workers by task name; `dispatch_many` is one Redis pipeline.

    `visibility_timeout` (Redis) and `delivery_limit` (RabbitMQ) must be the workers' own.
    """

    backend_name = BACKEND

    def __init__(
        self,
        broker_url: str,
        queue: str = "default",
        *,
        visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        idempotency: IdempotencyStore | None = None,
        idempotency_url: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(idempotency=idempotency, **options)
        self.broker_url = broker_url
        self.queue = queue
        self.amqp = is_amqp(broker_url)
        self.max_delay = longest_hold(broker_url, visibility_timeout)
        self.max_delay_reason = (
            "what RabbitMQ's native delayed delivery keeps"
            if self.amqp
            else "90% of the Celery visibility_timeout; raise it on producer and workers"
        )
        if idempotency is None:
            url = idempotency_url or broker_url
            self.idempotency = idempotency_store_for(url, self.timeout, what=BACKEND)
        attempt_timeout = max(self.timeout / 3, 0.05)  # one try, one retry after a reconnect
        self.app = Celery("jobs_core.producer", set_as_current=False)
        self.app.conf.update(
            celery_conf(
                broker_url,
                queue,
                visibility_timeout=visibility_timeout,
                delivery_limit=delivery_limit,
                timeout=attempt_timeout,
            ),
            broker_connection_timeout=attempt_timeout,
            broker_connection_max_retries=1,
            task_publish_retry_policy=dict(PUBLISH_RETRY_POLICY),
        )
        self.enqueues_in_store_transaction = (
            idempotency is None and idempotency_url is None and is_redis_url(broker_url)
        )  # the keys live in the broker's Redis: claimed in the transaction that pushes the task
        self._declared = False
        shared = getattr(self.idempotency, "client", None) if idempotency_url is None else None
        self.waits = waits_for_producer(broker_url, shared)  # C42

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        """Publish through Celery's own message layer (`app.amqp`), as `send_task` does, minus
        routing (the queue is known) and the result object (results are ignored). Several jobs
        go in kombu's `Producer.batch()`: one Redis pipeline, flushed at the end."""
        amqp, queue = self.app.amqp, self.app.amqp.queues[self.queue]
        # One Redis pipeline (kombu's batch), not retried in part. RabbitMQ has no batch: each
        # publish waits for its confirm.
        batch = len(jobs) > 1 and not self.amqp
        options: dict[str, Any] = {"retry": False, "declare": []} if batch else {}
        options.update(content_type="application/json", content_encoding="utf-8")  # pre-encoded
        with self.app.producer_or_acquire() as producer:
            if self.amqp and not self._declared:
                self._declare(producer, queue)
            elif batch:
                producer.maybe_declare(queue, retry=True, **PUBLISH_RETRY_POLICY)
            with producer.batch(max_size=len(jobs) + 1) if batch else nullcontext():
                for p in jobs:
                    message = _task_message(amqp, p)
                    route = self._delayed_route(p, queue) if self.amqp else {}
                    amqp.send_task_message(
                        producer, p.name, message, queue=queue, **route, **options
                    )
        return [p.dispatch_id for p in jobs]

    def _enqueue_in(self, transaction: Any, jobs: Sequence[PreparedJob]) -> None:
        """Push `jobs` onto the Redis list kombu consumes, as kombu's Redis transport pushes a
        task message (`redis_item`), in the transaction that claims their keys."""
        amqp, queue = self.app.amqp, self.app.amqp.queues[self.queue]
        for p in jobs:
            transaction.lpush(queue.name, redis_item(_task_message(amqp, p), queue.name))

    def _declare(self, producer: Any, queue: Any) -> None:
        """RabbitMQ, once: the queue, its dead-letter queue and the native delayed delivery
        exchanges (a worker declares them too; a producer may come first, and with publisher
        confirms a message for an exchange not yet declared is refused, not lost)."""
        connection = producer.connection
        channel = producer.channel
        dead_letter_entity(self.queue, self.broker_url).bind(channel).declare()
        queue.bind(channel).declare()
        declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
        bind_queue_to_native_delayed_delivery_exchange(connection, queue)
        self._declared = True

    @staticmethod
    def _delayed_route(prepared: PreparedJob, queue: Any) -> dict[str, Any]:
        """On RabbitMQ, a delay of a second or more goes through native delayed delivery, as
        Celery's `send_task` sends it; the message's `eta` keeps what is left of the second."""
        seconds = int(prepared.delay_seconds())
        if seconds < 1:
            return {}
        return {
            "exchange": DELAYED_EXCHANGE,
            "routing_key": calculate_routing_key(seconds, queue.routing_key),
        }

    def close(self) -> None:
        self.app.close()
        super().close()

    def __repr__(self) -> str:
        return f"CeleryDispatcher(broker_url={redact_url(self.broker_url)!r}, queue={self.queue!r})"


def redis_item(message: Any, queue: str) -> bytes:
    """The item kombu's Redis transport pushes onto `queue`'s list for Celery's task `message`
    (what `producer.publish` and the channel's `basic_publish` make of it): the envelope of
    `Channel.prepare_message`, its body base64-encoded, routed by the anonymous exchange.
    tests/celery/test_dispatcher.py compares it with what kombu itself pushes."""
    properties = {
        **message.properties,
        "delivery_mode": 2,
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
        "delivery_info": {"exchange": "", "routing_key": queue},
    }
    envelope = {
        "body": base64.b64encode(message.body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": message.headers,
        "properties": properties,
    }
    return pydantic_core.to_json(envelope)


def _task_message(amqp: Any, prepared: PreparedJob) -> Any:
    """Celery's task message for `prepared`, its body `[[payload], kwargs, embed]` as JSON bytes
    around the payload's JSON, which the core made once (kombu serialises a body only when it
    is not already bytes with a content type)."""
    message = amqp.create_task_message(
        prepared.dispatch_id, prepared.name, (), {}, eta=prepared.eta, **MESSAGE_OPTIONS
    )
    _, kwargs, embed = message.body
    rest = pydantic_core.to_json([kwargs, embed])[1:]
    if prepared.headers:  # what hooks (tracing) send with the job: a header of its own
        message.headers[HEADERS_KEY] = dict(prepared.headers)
    return message._replace(body=b"[[" + prepared.body + b"]," + rest)


create_dispatcher = broker_dispatcher_factory(CeleryDispatcher, BACKEND)
