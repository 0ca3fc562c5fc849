"""Benchmarks for jobs_core: each backend against the best a user could do without jobs_core.

Run `python -m benchmarks` (options in `benchmarks/__main__.py`; the page is
docs/performance.md). Every comparison runs its sides in the same run, interleaved round by
round, and reports the median and the [min–max] of the per-round ratios, because the machine is
shared and noisy. Brokers are private `redis-server`s on a free loopback port, started as the
tests start them (`tests/support/redis_server.py`).

Machinery: `config` (sizes and rounds of a full, `--quick` or `--smoke` run), `timing`
(interleaved timing), `results` (rows, the table), `machine` (versions, load), `processes`
(worker subprocesses), `counter` (a completion counter a no-op job can afford), `jobs` (the job
and its payloads), `scenario` (what a scenario module is, and the list of them), `report`
(reading a run's JSON back, merging another run's scenarios, the docs' tables).

Scenarios: `micro` (the core's CPU per dispatch and per job, stage by stage, against its
floor), `memory`, `inline_bench`, `celery_bench`, `dramatiq_bench`, `inngest_bench`, built from
two shared suites: `dispatch_suite` (dispatch, keyed, batch rows from a `DispatchKit`) and
`worker_suite` (worker drain, end-to-end and idle rows from a `WorkerKit`); `plain_celery` and
`plain_dramatiq` are the plain app and actor the worker rows compare with; `flow_bench`,
`outbox_bench`; `constructs` (issue 27's budget for cleverness: each speed-only construct
against an end-to-end dispatch to Redis), with the removed ones rebuilt in `removed`.
"""
