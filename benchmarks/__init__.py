"""Benchmarks for jobs_core: each backend against the best a user could do without jobs_core.

Run `python -m benchmarks` (options in `benchmarks/__main__.py`; the page is
docs/performance.md). Every comparison runs its sides in the same run, interleaved round by
round, and reports the median and the [min–max] of the per-round ratios, because the machine is
shared and noisy. Brokers are private `redis-server`s on a free loopback port, started as the
tests start them (`tests/support/redis_server.py`).

Machinery: `config` (sizes, rounds), `timing` (interleaved timing), `results` (rows, the
table), `machine` (versions, load), `processes` (worker subprocesses), `counter` (a completion
counter a no-op job can afford), `jobs` (the job and its payloads), `scenario` (what a scenario
module is, and the list of them), `report` (reading a run's JSON back).

Scenarios: `micro` (the core's CPU per dispatch and per job, stage by stage), `memory`,
`inline_bench`, `celery_bench`, `dramatiq_bench`, `inngest_bench`, built from two shared
suites: `dispatch_suite` (dispatch, keyed, batch rows from a `DispatchKit`) and `worker_suite`
(worker drain and end-to-end rows from a `WorkerKit`); `plain_celery` and `plain_dramatiq` are
the plain app and actor the worker rows compare with.
"""
