"""The plain Dramatiq actor of the worker rows: what a user writes without jobs_core.

`dramatiq benchmarks.plain_dramatiq -p 1 -t 8` runs it (the benchmark starts it so, with
Dramatiq's default logging): a `RedisBroker(url=...)` with Dramatiq's default middleware and
one actor. Broker and queue come from `BENCH_BROKER_URL` and `BENCH_QUEUE`; the counter from
`BENCH_COUNTER`.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker as _RedisBroker

from .jobs import COUNTER, JOB_NAME, plain_body

RedisBroker: Any = _RedisBroker  # untyped constructor

broker = RedisBroker(url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name=JOB_NAME, queue_name=os.environ.get("BENCH_QUEUE", "default"))
def noop(data: Any) -> None:
    plain_body(data, COUNTER)
