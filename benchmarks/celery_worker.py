"""The Celery worker process of the end-to-end scenario: both sides in one worker.

`python -m benchmarks.celery_worker BROKER_URL QUEUE [POOL CONCURRENCY]` starts one worker
(default: threads pool, concurrency 8) of an app made by `jobs_core.backends.celery.create_celery_app`
with the benchmark's registry (ours: the jobs_core task that calls `run_job_sync`), plus a
plain task `bench.raw` on the same app, so both sides run with exactly the same settings
(acks_late, prefetch 1, JSON). Each side's handler does one Redis `INCR` of its own counter.
"""

from __future__ import annotations

import sys
from typing import Any

import redis

from jobs_core.backends.celery import create_celery_app

from .jobs import RAW_NAME, RedisHits, counter_keys, jobs

DEFAULT_POOL = "threads"
DEFAULT_CONCURRENCY = 8


def build_app(broker_url: str, queue: str) -> Any:
    """The worker app: our task for `bench.noop` and the plain task `bench.raw`."""
    client = redis.Redis.from_url(broker_url, socket_connect_timeout=5, socket_timeout=30)
    ours_key, raw_key = counter_keys(queue)
    app = create_celery_app(
        jobs,
        context=RedisHits(client, ours_key),
        broker_url=broker_url,
        queue=queue,
        worker_hijack_root_logger=False,
    )

    def raw(data: Any) -> None:
        client.incr(raw_key)

    app.task(name=RAW_NAME, ignore_result=True)(raw)
    return app


def main(argv: list[str]) -> int:
    broker_url, queue = argv[0], argv[1]
    pool = argv[2] if len(argv) > 2 else DEFAULT_POOL
    concurrency = argv[3] if len(argv) > 3 else str(DEFAULT_CONCURRENCY)
    app = build_app(broker_url, queue)
    app.worker_main(
        argv=[
            "worker",
            "--pool",
            pool,
            "--concurrency",
            concurrency,
            "--queues",
            queue,
            "--loglevel",
            "WARNING",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
