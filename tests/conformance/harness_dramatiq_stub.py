"""The Dramatiq backend on Dramatiq's own fake: `StubBroker` and a real `dramatiq.Worker`.

The worker side is the production one: `jobs_core.backends.dramatiq.register_actors` declares
the test's jobs as actors on the broker, with Dramatiq's default middleware (minus `TimeLimit`,
as `make_worker_broker` sets it up), and a `dramatiq.Worker` runs them. The producer is the
production `DramatiqDispatcher`, given the stub broker (it makes its broker from a URL, and a
stub has none). Delays, retries and dead letters go through the stub's queues, its delay queue
and its dead-letter list; `drain` is Dramatiq's own `broker.join(queue)` and `worker.join()`.

The broker's own part (Redis transactions, unacked sets, a broker that is down) is the
`dramatiq` harness's, on a real redis-server.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker

from jobs_core import JobRegistry
from jobs_core.backends.dramatiq import DramatiqDispatcher
from jobs_core.dispatch.dispatcher import BaseDispatcher
from jobs_core.dispatch.idempotency import MemoryIdempotencyStore
from jobs_core.instrumentation import Instrumentation
from tests.support.names import new_queue_name

from .harness import FakeBrokerHarness
from .harness_dramatiq import DramatiqHarness, DramatiqWorkerSession, registry_worker


class StubDispatcher(DramatiqDispatcher):
    """`DramatiqDispatcher` on a broker object it is given, with the keys of `idempotency_key`
    in this process (where the dispatcher puts them for any broker that is not Redis)."""

    def __init__(self, broker: Any, queue: str, **options: Any) -> None:
        BaseDispatcher.__init__(self, idempotency=MemoryIdempotencyStore(), **options)
        self.broker_url = "stub://"
        self.queue = queue
        self.client = None
        self.broker = broker
        self.enqueues_in_store_transaction = False

    def close(self) -> None:
        """The idempotency keys go; the broker, which the worker shares, is the session's."""
        BaseDispatcher.close(self)


def stub_broker() -> StubBroker:
    """A stub broker with the middleware a jobs_core worker broker has (`make_worker_broker`):
    Dramatiq's defaults without `TimeLimit`, plus `CurrentMessage`."""
    defaults = dramatiq.middleware.default_middleware
    middleware = [m() for m in defaults if m is not dramatiq.middleware.TimeLimit]
    middleware.append(dramatiq.middleware.CurrentMessage())
    broker = StubBroker(middleware=middleware)
    broker.emit_after("process_boot")
    return broker


class StubSession(DramatiqWorkerSession):
    def __init__(self, registry: JobRegistry[Any], context: Any, inst: Instrumentation) -> None:
        self.queue = new_queue_name("stub")
        self.broker = stub_broker()
        self.worker = registry_worker(self.broker, self.queue, registry, context, inst)
        self.dispatcher = StubDispatcher(self.broker, self.queue, instrumentation=inst)
        self._enqueued = 0
        enqueue = self.broker.enqueue

        def counting_enqueue(message: Any, *, delay: int | None = None) -> Any:
            if message.queue_name == self.queue:
                self._enqueued += 1
            return enqueue(message, delay=delay)

        self.broker.enqueue = counting_enqueue

    def release(self) -> None:
        """The broker, which the dispatcher shares, closes."""
        self.broker.close()

    # -- BackendSession -------------------------------------------------------------------

    def dead_letters(self) -> list[str]:
        return [str(m.actor_name) for m in self.broker.dead_letters]

    def enqueued_count(self) -> int:
        """Messages enqueued for the session's queue (delayed or not), by anyone: what the
        `dramatiq` harness counts as HSETs in Redis."""
        return self._enqueued


class DramatiqStubHarness(FakeBrokerHarness):
    name = "dramatiq"
    session_type = StubSession

    @property
    def url(self) -> str:
        """A stub broker has no URL: what a `create_dispatcher()` for this backend is given
        is the real harness's (`dramatiq`, on Redis)."""
        url: str = self.resources.redis_url(DramatiqHarness.redis_db)
        return url


def make_harness(resources: Any) -> DramatiqStubHarness:
    return DramatiqStubHarness(resources)
