"""Benchmarks for jobs_core: our dispatch and worker paths against the raw library calls.

Run `python -m benchmarks` (see `benchmarks/__main__.py` for the options). Every comparison
runs both sides in the same process run, interleaved round by round, and reports medians and
the ratio, because the machine is shared and noisy. Brokers are private `redis-server`s on a
free loopback port, started as the tests start them (`tests/support/redis_server.py`).

Modules: `common` (timing, results, processes), `jobs` (the benchmark job and payload),
`inline_bench`, `celery_bench`, `dramatiq_bench`, `inngest_bench` (one per backend),
`memory` (the inline memory scenario, run in a fresh process), `celery_worker` and
`dramatiq_worker` (the worker processes of the end-to-end scenario).
"""
