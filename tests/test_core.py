"""Core behaviour outside the backend contract: errors, settings, the worker path, inline options."""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from jobs_core import (
    DispatchError,
    JobConfigError,
    JobFailedError,
    JobPayloadError,
    JobRegistry,
    MultiInstrumentation,
    PermanentError,
    Retry,
    RetryLater,
)
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.config import load_settings, redact_url
from jobs_core.dispatch.dispatcher import BaseDispatcher, PartialSend, prepare_dispatch
from jobs_core.dispatch.prepared import PreparedJob
from jobs_core.errors import WorkerLostError
from jobs_core.jobs.payload import parse_payload, to_wire, validate_payload
from jobs_core.testing import RecordingInstrumentation
from jobs_core.worker import Delivery, JobWorker, Outcome


class _Noted:
    """A settlement that does nothing: the tests read the outcome."""

    def retry(self, delivery: Delivery, delay: timedelta) -> None: ...

    def give_up(self, delivery: Delivery, error: BaseException) -> None: ...


def run_once(job: Any, data: Any, context: Any = None, dispatch_id: str | None = "d") -> Outcome:
    """One delivery of `job` through the worker path, from sync code."""
    worker: JobWorker[Any] = JobWorker(None, context=context, backend="t")
    return worker.run(Delivery(job.name, data, 0, dispatch_id), _Noted(), job)


async def run_once_async(job: Any, data: Any, context: Any = None) -> Outcome:
    worker: JobWorker[Any] = JobWorker(None, context=context, backend="t")
    return await worker.run_async(Delivery(job.name, data, 0, "d"), _Noted(), job)


class Item(BaseModel):
    sku: str
    qty: int = 1


def test_job_call_runs_handler_once_without_retries() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    seen: list[Item] = []

    @jobs.job("t.call")
    async def handler(payload: Item, ctx: Any) -> None:
        seen.append(payload)
        raise RuntimeError("no retry here")

    with pytest.raises(RuntimeError):
        asyncio.run(handler.call({"sku": "a"}, None))
    assert seen == [Item(sku="a")]
    with pytest.raises(JobPayloadError):
        asyncio.run(handler.call({"qty": 2}, None))


def test_payload_error_names_job_and_fields_and_pickles() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    job = jobs.define_job("t.payload", payload=Item, handle=lambda p, c: None)
    with pytest.raises(JobPayloadError) as caught:
        validate_payload(job, {"qty": "many"})
    error = caught.value
    assert error.job_name == "t.payload"
    assert {e["loc"] for e in error.errors} == {("sku",), ("qty",)}
    assert "t.payload" in str(error) and "sku" in str(error) and "qty" in str(error)
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))
    assert clone.job_name == error.job_name and str(clone) == str(error)


@pytest.mark.parametrize("raw", [b"not json", "[1, 2]", "{}", 7, None, b"\xff\xfe", "{" * 5000])
def test_parse_payload_only_raises_job_payload_error(raw: Any) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    job = jobs.define_job("t.parse", payload=Item, handle=lambda p, c: None)
    with pytest.raises(JobPayloadError):
        parse_payload(job, raw)
    assert parse_payload(job, '{"sku": "x"}') == Item(sku="x")
    assert parse_payload(job, b'{"sku": "x", "qty": 3}') == Item(sku="x", qty=3)


def test_oversized_payload_is_refused_naming_the_limit() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    job = jobs.define_job("t.big", payload=Item, handle=lambda p, c: None)
    with pytest.raises(JobPayloadError, match="limit is 100 bytes"):
        to_wire(job, Item(sku="x" * 200), max_bytes=100)
    dispatcher = InlineDispatcher(max_payload_bytes=100)
    with pytest.raises(JobPayloadError, match="JOBS_MAX_PAYLOAD_BYTES"):
        dispatcher.dispatch_sync(job, {"sku": "x" * 200})


class Ledger(BaseModel):
    account: int
    lines: list[dict[str, int]] = []
    amount: float = 0.0


def test_integers_beyond_2_53_are_refused_naming_the_field() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    job = jobs.define_job("t.ints", payload=Ledger, handle=lambda p, c: None)
    edge = 2**53 - 1
    assert to_wire(job, Ledger(account=edge, lines=[{"n": -edge}])) == {
        "account": edge,
        "lines": [{"n": -edge}],
        "amount": 0.0,
    }
    assert to_wire(job, Ledger(account=1, amount=2.0**60))["amount"] == 2.0**60  # floats pass
    sixteen = to_wire(job, Ledger(account=1, lines=[{"id": 1234567890123456}]))  # 16 digits
    assert sixteen["lines"] == [{"id": 1234567890123456}]
    with pytest.raises(JobPayloadError) as caught:
        to_wire(job, Ledger(account=2**53 + 1, lines=[{"ok": 1, "big": -(2**64)}]))
    assert [e["loc"] for e in caught.value.errors] == [("account",), ("lines", 0, "big")]
    assert "account: integer 9007199254740993" in str(caught.value)
    assert "lines.0.big" in str(caught.value)
    dispatcher = InlineDispatcher()
    events = RecordingInstrumentation()
    dispatcher.instrumentation = events
    with pytest.raises(JobPayloadError, match="account"):
        dispatcher.dispatch_sync(job, {"account": 2**53})
    assert events.kinds("t.ints") == ["failed"]


@pytest.mark.parametrize(
    "number",
    [2**53 - 1, 2**53, -(2**53 - 1), -(2**53), 10**15, 10**16 - 1, 10**16, 2**63, -(10**30)],
)
def test_the_unsafe_integer_check_is_exact_wherever_the_number_is(number: int) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    job = jobs.define_job("t.edge", payload=Ledger, handle=lambda p, c: None)
    top, deep = Ledger(account=number), Ledger(account=1, lines=[{"a": 1}, {"deep": number}])
    if abs(number) > 2**53 - 1:
        for payload in (top, deep):
            with pytest.raises(JobPayloadError, match=str(number)):
                to_wire(job, payload)
    else:
        assert to_wire(job, top)["account"] == number
        assert to_wire(job, deep)["lines"][1]["deep"] == number
    digits = Item(sku="1234567890123456789012")  # sixteen digits and more in a str: no number
    as_text = jobs.define_job("t.digits", payload=Item, handle=lambda p, c: None)
    assert to_wire(as_text, digits)["sku"] == "1234567890123456789012"
    for payload in (top, deep):  # a mapping, validated at dispatch
        if abs(number) > 2**53 - 1:
            with pytest.raises(JobPayloadError, match=str(number)):
                prepare_dispatch(job, payload.model_dump(), 10**6)
        else:
            assert prepare_dispatch(job, payload.model_dump(), 10**6).payload == payload


def test_dispatch_ids_are_unique_across_threads_and_forked_processes() -> None:
    from concurrent.futures import ThreadPoolExecutor

    jobs: JobRegistry[Any] = JobRegistry()
    job = jobs.define_job("t.ids", payload=Item, handle=lambda p, c: None)

    def new_id(_: object = None) -> str:
        return prepare_dispatch(job, {"sku": "a"}, 0).dispatch_id

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(new_id, range(20_000)))
    assert len(ids) == 20_000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child draws its own random ids, not the parent's next ones
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)  # the child's copy is its own: a child that died leaves the read at EOF
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32 and child not in ids and child != new_id()


def test_errors_say_what_to_change() -> None:
    assert "could not dispatch job 'a'" in str(DispatchError("a", ConnectionError("refused")))
    assert pickle.loads(pickle.dumps(DispatchError("a", "down"))).job_name == "a"
    later = RetryLater(2.5)
    assert later.delay == timedelta(seconds=2.5)
    assert pickle.loads(pickle.dumps(later)).delay == timedelta(seconds=2.5)
    with pytest.raises(ValueError):
        RetryLater(-1)
    failed = JobFailedError("a", PermanentError("x"), 1)
    assert "gave up after 1 run(s)" in str(failed)


def test_settings_from_environment_and_secrets_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBS_BACKEND", "celery")
    monkeypatch.setenv("JOBS_BROKER_URL", "redis://user:s3cret-pw@host:6379/1")
    monkeypatch.setenv("JOBS_QUEUE", "mail")
    monkeypatch.setenv("JOBS_DISPATCH_TIMEOUT", "2.5")
    settings = load_settings()
    assert (settings.backend, settings.queue, settings.dispatch_timeout) == ("celery", "mail", 2.5)
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings)
    assert settings.redacted_broker_url == "redis://user:***@host:6379/1"
    assert redact_url("amqp://guest:guest@localhost:5672//") == "amqp://guest:***@localhost:5672//"
    assert redact_url("redis://:only-pass@h/0") == "redis://:***@h/0"
    monkeypatch.setenv("JOBS_DISPATCH_TIMEOUT", "-1")
    with pytest.raises(
        JobConfigError, match="JOBS_DISPATCH_TIMEOUT: Input should be greater than 0"
    ):
        load_settings()


def test_sync_job_runs_without_an_event_loop() -> None:
    """Sync handlers see no running loop (Django's ORM refuses to run inside one)."""
    jobs: JobRegistry[Any] = JobRegistry()
    loops: list[bool] = []

    def handler(payload: Item, ctx: Any) -> None:
        try:
            asyncio.get_running_loop()
            loops.append(True)
        except RuntimeError:
            loops.append(False)

    job = jobs.define_job("t.noloop", handle=handler)
    outcome = run_once(job, {"sku": "a"})
    assert outcome.completed and loops == [False]


def test_a_worker_given_another_context_asks_again_whether_runs_need_a_loop() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    job = jobs.define_job("t.ctx", payload=Item, handle=lambda p, c: None)

    async def async_context() -> str:
        return "ctx"

    worker: JobWorker[Any] = JobWorker(jobs, context=None, backend="t")
    assert worker.needs_event_loop(job) is False
    worker.context = async_context  # an async factory: its runs need a loop from now on
    assert worker.needs_event_loop(job) is True


def test_async_jobs_reuse_one_loop_per_thread() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    loops: list[int] = []

    @jobs.job("t.loop")
    async def handler(payload: Item, ctx: Any) -> None:
        loops.append(id(asyncio.get_running_loop()))

    def work() -> None:
        for _ in range(3):
            run_once(handler, {"sku": "a"})

    work()
    worker = threading.Thread(target=work)
    worker.start()
    worker.join(10)
    assert len(set(loops[:3])) == 1 and len(set(loops[3:])) == 1 and loops[0] != loops[3]


async def test_a_sync_run_of_an_async_job_inside_a_running_loop_names_the_public_call() -> None:
    jobs: JobRegistry[Any] = JobRegistry()

    @jobs.job("t.inloop")
    async def handler(payload: Item, ctx: Any) -> None: ...

    with pytest.raises(RuntimeError, match=r"await ctx\.jobs\.dispatch"):
        run_once(handler, {"sku": "a"})
    outcome = await run_once_async(handler, {"sku": "a"})
    assert outcome.completed


def test_on_failure_errors_do_not_break_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    jobs: JobRegistry[Any] = JobRegistry()

    def hook(error: BaseException, payload: Any, ctx: Any) -> None:
        raise KeyError("hook bug")

    @jobs.job("t.hook", retry=Retry(attempts=0), on_failure=hook)
    def handler(payload: Item, ctx: Any) -> None:
        raise PermanentError("no")

    outcome = run_once(handler, {"sku": "a"}, dispatch_id="x")
    assert outcome.gave_up and isinstance(outcome.error, PermanentError)
    assert "on_failure raised" in caplog.text


def test_context_factory_failure_is_retried_like_a_handler_error() -> None:
    jobs: JobRegistry[Any] = JobRegistry()

    @jobs.job("t.ctxfail", retry=Retry(attempts=1))
    def handler(payload: Item, ctx: Any) -> None: ...

    def broken() -> Any:
        raise ConnectionError("db down")

    outcome = run_once(handler, {"sku": "a"}, context=broken, dispatch_id=None)
    assert outcome.should_retry and isinstance(outcome.error, ConnectionError)


def test_inline_raises_job_failed_error_or_calls_on_error() -> None:
    jobs: JobRegistry[Any] = JobRegistry()

    @jobs.job(
        "t.inline", retry=Retry(attempts=2, min_backoff=timedelta(0), max_backoff=timedelta(0))
    )
    def handler(payload: Item, ctx: Any) -> None:
        raise RuntimeError("nope")

    with pytest.raises(JobFailedError) as caught:
        InlineDispatcher().dispatch_sync(handler, {"sku": "a"})
    assert caught.value.runs == 3 and isinstance(caught.value.error, RuntimeError)

    seen: list[tuple[BaseException, str]] = []
    dispatcher = InlineDispatcher(on_error=lambda e, job: seen.append((e, job.name)))
    receipt = dispatcher.dispatch_sync(handler, {"sku": "a"})
    assert receipt.backend == "inline" and [name for _, name in seen] == ["t.inline"]


def test_inline_wait_backoff_waits_the_schedule() -> None:
    import time

    jobs: JobRegistry[Any] = JobRegistry()
    times: list[float] = []
    retry = Retry(
        attempts=2,
        min_backoff=timedelta(milliseconds=100),
        max_backoff=timedelta(seconds=1),
        jitter=False,
    )

    @jobs.job("t.wait", retry=retry)
    def handler(payload: Item, ctx: Any) -> None:
        times.append(time.monotonic())
        raise RuntimeError("x")

    InlineDispatcher(on_error=lambda e, j: None, wait_backoff=True).dispatch_sync(
        handler, {"sku": "a"}
    )
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2, gaps


def test_instrumentation_failure_never_breaks_a_job(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def record(self, event: Any) -> None:
            raise RuntimeError("metrics down")

    jobs: JobRegistry[Any] = JobRegistry()
    ran: list[int] = []
    job = jobs.define_job("t.inst", payload=Item, handle=lambda p, c: ran.append(1))
    InlineDispatcher(instrumentation=Broken()).dispatch_sync(job, {"sku": "a"})
    assert ran == [1] and "failed to record" in caplog.text


def test_recording_instrumentation_wait_for_times_out() -> None:
    events = RecordingInstrumentation()
    assert events.wait_for(lambda evs: len(evs) > 0, timeout=0.05) is False


@pytest.mark.parametrize(
    "handler",
    [
        lambda: None,
        lambda payload, ctx, extra: None,
        lambda *, payload, ctx: None,
    ],
    ids=["no-params", "three-required", "keyword-only"],
)
def test_a_handler_that_cannot_take_payload_and_ctx_is_refused_at_definition(
    handler: Any,
) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    with pytest.raises(JobConfigError, match=r"called as handler\(payload, ctx\)"):
        jobs.define_job("t.arity", payload=Item, handle=handler)
    assert "t.arity" not in jobs


def test_a_handler_without_a_context_parameter_runs_without_one() -> None:
    """`handler(payload)`: the job needs no context; the context factory is not called for it,
    and `Job.call` needs none either."""
    jobs = JobRegistry()
    seen: list[str] = []
    made: list[int] = []

    @jobs.job("t.no-ctx")
    def handler(payload: Item) -> None:
        seen.append(payload.sku)

    assert not handler.takes_context
    InlineDispatcher(context=lambda: made.append(1)).dispatch_sync(handler, {"sku": "a"})
    asyncio.run(handler.call({"sku": "b"}))
    assert seen == ["a", "b"] and made == []


def test_handlers_that_can_take_payload_and_ctx_are_accepted() -> None:
    jobs: JobRegistry[Any] = JobRegistry()

    class Callable_:
        def __call__(self, payload: Item, ctx: Any) -> None: ...

    jobs.define_job("t.ok1", payload=Item, handle=lambda p, c, extra=1: None)
    jobs.define_job("t.ok2", payload=Item, handle=lambda *args: None)
    jobs.define_job("t.ok3", payload=Item, handle=Callable_())
    assert len(jobs) == 3


def test_an_unknown_job_option_is_refused_naming_those_a_job_takes() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    options: dict[str, Any] = {"retries": 3}
    with pytest.raises(JobConfigError, match=r"unknown option retries; a job takes retry, "):
        jobs.job("t.misspelt", **options)
    with pytest.raises(JobConfigError, match="unknown option retries"):
        jobs.define_job("t.misspelt", payload=Item, handle=lambda p, c: None, **options)
    assert "t.misspelt" not in jobs


def test_bare_job_decorator_is_refused_naming_the_fix() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    with pytest.raises(JobConfigError, match=r'@jobs.job\("some.name"\)'):

        @jobs.job  # type: ignore[arg-type]
        def handler(payload: Item, ctx: Any) -> None: ...

    assert len(jobs) == 0


@pytest.mark.parametrize("raw", ["celery", "Celery", " CELERY ", "celery\n"])
def test_jobs_backend_ignores_case_and_spaces(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBS_BACKEND", raw)
    assert load_settings().backend == "celery"


def test_a_factory_path_in_jobs_backend_keeps_its_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBS_BACKEND", " MyPkg.Adapters:Make ")
    assert load_settings().backend == "MyPkg.Adapters:Make"


def test_passing_instrumentation_keeps_the_default_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    job = jobs.define_job("t.logs", payload=Item, handle=lambda p, c: None)
    events = RecordingInstrumentation()
    dispatcher = InlineDispatcher(instrumentation=events)
    with caplog.at_level("DEBUG", logger="jobs_core"):
        receipt = dispatcher.dispatch_sync(job, {"sku": "a"})
    assert events.kinds("t.logs") == ["scheduled", "started", "completed"]
    logged = [r.getMessage() for r in caplog.records if r.name == "jobs_core"]
    assert any(f"job completed: t.logs dispatch_id={receipt.dispatch_id}" in m for m in logged)
    assert any("job scheduled: t.logs" in m for m in logged)


def test_a_logging_instrumentation_given_is_not_doubled(caplog: pytest.LogCaptureFixture) -> None:
    from jobs_core import LoggingInstrumentation, MultiInstrumentation

    jobs: JobRegistry[Any] = JobRegistry()
    job = jobs.define_job("t.once", payload=Item, handle=lambda p, c: None)
    events = RecordingInstrumentation()
    dispatcher = InlineDispatcher(
        instrumentation=MultiInstrumentation(LoggingInstrumentation(), events)
    )
    with caplog.at_level("DEBUG", logger="jobs_core"):
        dispatcher.dispatch_sync(job, {"sku": "a"})
    completed = [r for r in caplog.records if "job completed: t.once" in r.getMessage()]
    assert len(completed) == 1
    assert events.kinds("t.once") == ["scheduled", "started", "completed"]


def test_a_job_that_went_well_writes_no_line_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """The per-job line a production worker (INFO) would pay for is DEBUG; retries and
    give-ups stay at WARNING and ERROR."""
    jobs: JobRegistry[Any] = JobRegistry()
    calls: list[int] = []

    def flaky(payload: Item, ctx: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RetryLater(0)

    job = jobs.define_job("t.quiet", payload=Item, handle=flaky, retry=Retry(attempts=1))
    broken = jobs.define_job(
        "t.broken", payload=Item, handle=lambda p, c: 1 / 0, retry=Retry(attempts=0)
    )
    dispatcher = InlineDispatcher(raise_on_failure=False)
    with caplog.at_level("INFO", logger="jobs_core"):
        dispatcher.dispatch_sync(job, {"sku": "a"})
        dispatcher.dispatch_sync(broken, {"sku": "b"})
    assert len(calls) == 2
    lines = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
    assert lines == [("WARNING", "job retrying"), ("ERROR", "job failed")], lines


def test_an_instrumentation_gets_only_the_kinds_it_wants() -> None:
    class OnlyFailures(RecordingInstrumentation):
        def wants(self, kind: str) -> bool:
            return kind == "failed"

    jobs: JobRegistry[Any] = JobRegistry()
    ok = jobs.define_job("t.ok", payload=Item, handle=lambda p, c: None)
    broken = jobs.define_job(
        "t.no", payload=Item, handle=lambda p, c: 1 / 0, retry=Retry(attempts=1)
    )
    events, everything = OnlyFailures(), RecordingInstrumentation()
    both = MultiInstrumentation(events, everything)
    dispatcher = InlineDispatcher(instrumentation=both, raise_on_failure=False)
    dispatcher.dispatch_sync(ok, {"sku": "a"})
    dispatcher.dispatch_sync(broken, {"sku": "b"})
    assert [(e.job_name, e.kind) for e in events.events] == [("t.no", "failed")]
    assert everything.kinds("t.ok") == ["scheduled", "started", "completed"]
    assert everything.kinds("t.no") == ["scheduled", "started", "retrying", "started", "failed"]


class _PartialDispatcher(BaseDispatcher):
    """Takes the first `take` jobs of every send, then refuses the rest; refuses jobs named
    `*.refused` before sending (the `_check` hook)."""

    backend_name = "partial"

    def __init__(self, take: int) -> None:
        super().__init__()
        self.take = take
        self.sent: list[str] = []

    def _check(self, prepared: PreparedJob) -> None:
        if prepared.name.endswith(".refused"):
            raise JobConfigError(f"job {prepared.name!r}: refused by the partial backend")

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        ids = [p.dispatch_id for p in jobs[: self.take]]
        self.sent += ids
        if len(jobs) > self.take:
            raise PartialSend(ids, RuntimeError("the backend refused event 2"))
        return ids


def test_a_partial_send_gives_receipts_for_what_was_taken_and_fails_the_rest() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    job = jobs.define_job("t.partial", payload=Item, handle=lambda p, c: None)
    dispatcher = _PartialDispatcher(take=1)
    events = RecordingInstrumentation()
    dispatcher.instrumentation = events
    with pytest.raises(DispatchError) as caught:
        dispatcher.dispatch_many_sync(
            [(job, {"sku": "a"}), (job, {"sku": "b"}), (job, {"sku": "c"})]
        )
    [accepted] = caught.value.accepted
    assert accepted.dispatch_id == dispatcher.sent[0] and accepted.job_name == "t.partial"
    assert "1 of 3 jobs were accepted" in str(caught.value)
    assert "the backend refused event 2" in str(caught.value)
    assert events.kinds("t.partial") == ["scheduled", "failed", "failed"]
    assert events.for_job("t.partial")[0].dispatch_id == accepted.dispatch_id


def test_what_the_backend_would_refuse_is_refused_before_anything_is_sent() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    good = jobs.define_job("t.fine", payload=Item, handle=lambda p, c: None)
    bad = jobs.define_job("t.refused", payload=Item, handle=lambda p, c: None)
    dispatcher = _PartialDispatcher(take=10)
    events = RecordingInstrumentation()
    dispatcher.instrumentation = events
    with pytest.raises(JobConfigError, match="refused by the partial backend"):
        dispatcher.dispatch_many_sync([(good, {"sku": "a"}), (bad, {"sku": "b"})])
    assert dispatcher.sent == []
    assert events.kinds("t.refused") == ["failed"] and events.kinds("t.fine") == []


def test_a_retry_wait_longer_than_the_backend_keeps_gives_up_saying_why() -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    failures: list[BaseException] = []

    @jobs.job("t.toolong", retry=Retry(attempts=3), on_failure=lambda e, p, c: failures.append(e))
    def handler(payload: Item, ctx: Any) -> None:
        raise RetryLater(timedelta(hours=2))

    events = RecordingInstrumentation()
    worker = JobWorker(
        jobs, context=None, backend="t", instrumentation=events, max_retry_wait=timedelta(hours=1)
    )
    outcome = worker.run_in_process(handler, {"sku": "a"}, "d", _NoSettlement(), wait=False)
    assert outcome.gave_up and outcome.attempt == 0
    [error] = failures
    assert isinstance(error, PermanentError) and isinstance(error.__cause__, RetryLater)
    assert "2:00:00 is longer than this backend waits between attempts (1:00:00)" in str(error)
    assert events.kinds("t.toolong") == ["started", "failed"]
    assert worker.run_in_process(handler, {"sku": "a"}, "d", _NoSettlement(), wait=False).gave_up


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_lost_run_runs_on_failure_once_and_records_failed(kind: str) -> None:
    jobs: JobRegistry[Any] = JobRegistry()
    calls: list[tuple[BaseException, Any, Any]] = []

    def hook(error: BaseException, payload: Any, ctx: Any) -> None:
        calls.append((error, payload, ctx))

    async def async_hook(error: BaseException, payload: Any, ctx: Any) -> None:
        hook(error, payload, ctx)

    job = jobs.define_job(
        f"t.lost.{kind}",
        payload=Item,
        handle=lambda p, c: None,
        on_failure=hook if kind == "sync" else async_hook,
    )
    events = RecordingInstrumentation()
    worker = JobWorker(jobs, context=lambda: "ctx", backend="t", instrumentation=events)
    lost = WorkerLostError("the worker died")
    delivery = Delivery(job.name, {"sku": "a"}, 2, "d-1")
    if kind == "sync":
        await asyncio.to_thread(worker.backend_gave_up, job, delivery, lost)
    else:
        await worker.backend_gave_up_async(job, delivery, lost)
    await worker.backend_gave_up_async(job, Delivery(job.name, {"bad": 1}, 2, "d-2"), lost)
    assert calls == [(lost, Item(sku="a"), "ctx"), (lost, {"bad": 1}, "ctx")]
    failed = events.for_job(job.name)
    assert [(e.kind, e.phase, e.attempt, e.dispatch_id) for e in failed] == [
        ("failed", "execute", 2, "d-1"),
        ("failed", "execute", 2, "d-2"),
    ]
    assert failed[0].error == "WorkerLostError: the worker died"


class _NoSettlement:
    def retry(self, delivery: Delivery, delay: timedelta) -> None: ...

    def give_up(self, delivery: Delivery, error: BaseException) -> None: ...
