"""The Dramatiq worker process of the end-to-end scenario: both sides in one worker.

`python -m benchmarks.dramatiq_worker BROKER_URL QUEUE [THREADS]` starts one worker process
(default 8 threads) on a broker made by `jobs_core.backends.dramatiq.make_worker_broker`, with our actor
(`register_actors`: the jobs_core actor that calls `run_job_sync`) and a plain actor
`bench.raw` on the same broker and queue, so both sides run with the same settings. Each side's
handler does one Redis `INCR` of its own counter. It runs until SIGTERM / SIGINT.

The idle poll interval (`worker_timeout`) is 100 ms instead of our CLI's 1 s: between rounds
the worker is idle, and a long back-off would add up to a second of random wake-up time to
whichever side comes next.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import dramatiq
import redis

from jobs_core.backends.dramatiq import close_broker, make_worker_broker, register_actors

from .jobs import RAW_NAME, RedisHits, counter_keys, jobs

DEFAULT_THREADS = 8
WORKER_TIMEOUT_MS = 100


def build_broker(broker_url: str, queue: str) -> Any:
    """The worker broker with our actor for `bench.noop` and the plain actor `bench.raw`."""
    client = redis.Redis.from_url(broker_url, socket_connect_timeout=5, socket_timeout=30)
    ours_key, raw_key = counter_keys(queue)
    broker = make_worker_broker(broker_url)
    register_actors(jobs, context=RedisHits(client, ours_key), broker=broker, queue=queue)

    def raw(data: Any) -> None:
        client.incr(raw_key)

    dramatiq.actor(actor_name=RAW_NAME, queue_name=queue, broker=broker)(raw)
    return broker


def main(argv: list[str]) -> int:
    broker_url, queue = argv[0], argv[1]
    threads = int(argv[2]) if len(argv) > 2 else DEFAULT_THREADS
    broker = build_broker(broker_url, queue)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=WORKER_TIMEOUT_MS)
    worker.start()
    print("dramatiq bench worker ready", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        worker.stop(timeout=10_000)
        close_broker(broker)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
