"""The Celery backend: one Celery task per job, run through the core's `run_job_sync`.

Producer side, `CeleryDispatcher` sends each job by name (`send_task`) with one JSON argument
(the validated payload), the core's dispatch id as task id, and `eta` for delays. Worker side,
`create_celery_app(registry, context=...)` registers one task per job; each delivery is one call
of the core's runner, and its `JobOutcome` is mapped onto Celery:

- retry: `raise self.retry(countdown=<the core's wait>, max_retries=job.retry.attempts)`;
- give up (the core already ran `on_failure` and recorded `failed`): re-raise the error, so
  the task ends as FAILURE and is acked; never `Ignore` (the job would vanish);
- unknown task name (C17): Celery rejects the message and fires `task_unknown`; we record it
  (`report_unknown_job`) and republish the raw message to the queue `<queue>.dead`;
- a malformed message (a body that is not JSON, or not Celery's `[args, kwargs, embed]`): our
  task strategy turns the error into Celery's `InvalidTaskError`, so Celery logs and rejects it
  instead of stopping the worker (a wrong-shape body raised out of Celery's consumer loop and
  stopped the worker; a non-JSON body was acked and dropped); on `task_rejected` we log it with
  its job name and task id and republish it to `<queue>.dead` too.

Safe defaults (see BACKEND_NOTES.md): JSON only, `task_acks_late`, `task_reject_on_worker_lost`,
`worker_prefetch_multiplier=1`, and on Redis a `visibility_timeout` of 2 h. A message not acked
within `visibility_timeout` is delivered again: that is how a SIGKILLed worker's jobs come back,
but it also applies to messages waiting for their `eta` inside a worker, so a dispatch `delay`
longer than 90 % of the visibility timeout is refused, and a longer retry wait is split into hops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from jobs_core.config import JobsSettings, load_settings, missing_extra, redact_url
from jobs_core.dispatcher import DEFAULT_DISPATCH_TIMEOUT, BaseDispatcher, PreparedJob
from jobs_core.errors import JobConfigError
from jobs_core.execution import ContextSource, report_unknown_job, run_job_sync
from jobs_core.idempotency import IdempotencyStore, MemoryIdempotencyStore, RedisIdempotencyStore
from jobs_core.instrumentation import Instrumentation, with_logging
from jobs_core.job import Job, JobRegistry
from jobs_core.payload import DEFAULT_MAX_PAYLOAD_BYTES

try:
    import redis
    from celery import Celery, signals
    from celery.exceptions import Ignore, InvalidTaskError, Reject, Retry
    from kombu.entity import Queue as _KombuQueue
    from kombu.exceptions import DecodeError as _KombuDecodeError

    from ._celery_patches import holding_limit, install_worker_patches  # jobs_core: issue 18
except ImportError as exc:  # pragma: no cover - exercised by the C24 test
    raise missing_extra("celery", "celery", getattr(exc, "name", None) or "celery") from exc

BACKEND = "celery"
Queue: Any = _KombuQueue

DEFAULT_VISIBILITY_TIMEOUT = 7200.0
"""Seconds a delivered message may stay unacked (Redis) before it is delivered again.

Celery's own default is 3,600 s, the same as the longest default retry wait (`Retry()`'s
`max_backoff` of 1 h), so a retry waiting in a worker could run twice; 2 h leaves room. A worker
killed outright gets its jobs back after this long (plus one restore sweep)."""

MAX_DELAY_FRACTION = 0.9
"""A delay (or one retry hop) may use at most this share of the visibility timeout; the rest
is left for the run itself, since a job is acked only when it ends (acks_late)."""

NOT_BEFORE_KWARG = "jobs_core_not_before"
"""Task kwarg (Unix time) on a retry whose wait is longer than one hop: run no earlier."""

DEAD_LETTER_SUFFIX = ".dead"

ARGSREPR = "(<payload>,)"
"""What monitoring tools (Flower, `celery inspect`) show for a job's arguments: payloads may
hold personal data or secrets (C23), so they stay out of the message headers."""

MESSAGE_OPTIONS: dict[str, Any] = {
    "argsrepr": ARGSREPR,
    "kwargsrepr": "{}",
    "ignore_result": True,
}

PUBLISH_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.1,
    "interval_max": 0.1,
}
"""One retry after a reconnect: with the per-attempt socket timeouts (a third of the dispatch
timeout) a dead broker fails within the dispatch timeout (C7)."""

logger = logging.getLogger("jobs_core.celery")


def dead_letter_queue(queue: str) -> str:
    """Where messages for unknown job names are kept for an operator (a list on Redis)."""
    return f"{queue}{DEAD_LETTER_SUFFIX}"


def max_delay_seconds(visibility_timeout: float) -> float:
    return visibility_timeout * MAX_DELAY_FRACTION


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://", "unix://"))


def _transport_options(visibility_timeout: float, timeout: float | None) -> dict[str, Any]:
    options: dict[str, Any] = {"visibility_timeout": visibility_timeout}
    if timeout is not None:
        # Redis (kombu/redis-py) and AMQP (py-amqp) names: a dead broker fails fast, never hangs.
        options.update(
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            connect_timeout=timeout,
        )
    return options


def _base_conf(
    broker_url: str, queue: str, visibility_timeout: float, timeout: float | None
) -> dict[str, Any]:
    return {
        "broker_url": broker_url,
        "task_default_queue": queue,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": _transport_options(visibility_timeout, timeout),
        "broker_connection_retry_on_startup": True,
        "enable_utc": True,
    }


# -- producer side ------------------------------------------------------------------------


class CeleryDispatcher(BaseDispatcher):
    """Sends jobs to Celery workers by task name; `dispatch_many` is one Redis pipeline."""

    backend_name = BACKEND

    def __init__(
        self,
        broker_url: str,
        queue: str = "default",
        *,
        instrumentation: Instrumentation | None = None,
        timeout: float = DEFAULT_DISPATCH_TIMEOUT,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
        idempotency: IdempotencyStore | None = None,
        idempotency_url: str | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.queue = queue
        # jobs_core: issue 18 (RabbitMQ's consumer_timeout bounds how long a message is held)
        self.visibility_timeout = holding_limit(broker_url, visibility_timeout)
        self._redis: Any = None
        if idempotency is None:
            idempotency = self._default_idempotency(idempotency_url or broker_url, timeout)
        super().__init__(
            instrumentation=instrumentation,
            idempotency=idempotency,
            max_payload_bytes=max_payload_bytes,
            timeout=timeout,
        )
        # Each attempt gets a third of the budget: one try, one retry after a reconnect.
        attempt_timeout = max(timeout / 3, 0.05)
        conf = _base_conf(broker_url, queue, visibility_timeout, attempt_timeout)
        conf.update(
            broker_connection_timeout=attempt_timeout,
            broker_connection_max_retries=1,
            task_publish_retry_policy=dict(PUBLISH_RETRY_POLICY),
        )
        self.app = Celery("jobs_core.producer", set_as_current=False)
        self.app.conf.update(conf)
        self._queue_entity: Any = None
        self._closed = False
        self._lock = threading.Lock()

    def _default_idempotency(self, url: str, timeout: float) -> IdempotencyStore:
        if _is_redis(url):
            self._redis = redis.Redis.from_url(
                url, socket_connect_timeout=timeout, socket_timeout=timeout
            )
            return RedisIdempotencyStore(self._redis)
        logger.warning(
            "celery broker %s is not Redis and no idempotency_url= was given: idempotency keys "
            "are kept in this process only",
            redact_url(url),
        )
        return MemoryIdempotencyStore()

    def _check_delays(self, jobs: Sequence[PreparedJob]) -> None:
        limit = max_delay_seconds(self.visibility_timeout)
        now = datetime.now(timezone.utc)
        for prepared in jobs:
            if prepared.eta is not None and prepared.delay_seconds(now) > limit:
                raise ValueError(
                    f"delay of {prepared.delay_seconds(now):.0f}s is longer than {limit:.0f}s "
                    f"(90% of the Celery visibility_timeout of {self.visibility_timeout:.0f}s): "
                    "the message would be delivered again while it waits; raise "
                    "visibility_timeout on the dispatcher and the workers to allow it"
                )

    def _send(self, jobs: Sequence[PreparedJob]) -> list[str]:
        """Publish through Celery's own message layer (`app.amqp`), as `send_task` does.

        Skipped from `send_task`: routing (the queue is known) and the result object (results
        are ignored). One job: one publish, retried once after a reconnect. Several: kombu's
        `Producer.batch()` (kombu >= 5.7) buffers them into one Redis pipeline; nothing is sent
        before its flush, so there is no per-message retry or queue declaration.
        """
        self._check_delays(jobs)
        amqp = self.app.amqp
        queue = self._queue_entity or amqp.queues[self.queue]
        self._queue_entity = queue
        create_message, send_message = amqp.create_task_message, amqp.send_task_message
        with self.app.producer_or_acquire() as producer:
            if len(jobs) == 1:
                p = jobs[0]
                message = create_message(
                    p.dispatch_id, p.job.name, (p.data,), {}, eta=p.eta, **MESSAGE_OPTIONS
                )
                send_message(producer, p.job.name, message, queue=queue)
                return [p.dispatch_id]
            producer.maybe_declare(queue, retry=True, **PUBLISH_RETRY_POLICY)
            with producer.batch(max_size=len(jobs) + 1):
                for p in jobs:
                    message = create_message(
                        p.dispatch_id, p.job.name, (p.data,), {}, eta=p.eta, **MESSAGE_OPTIONS
                    )
                    send_message(
                        producer, p.job.name, message, queue=queue, retry=False, declare=[]
                    )
        return [p.dispatch_id for p in jobs]

    def close(self) -> None:
        """Release the broker connections (and the idempotency client)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.app.close()
        if self._redis is not None:
            self._redis.close()

    def __repr__(self) -> str:
        return f"CeleryDispatcher(broker_url={redact_url(self.broker_url)!r}, queue={self.queue!r})"


def create_dispatcher(
    settings: JobsSettings,
    *,
    context: ContextSource = None,
    instrumentation: Instrumentation | None = None,
    **options: Any,
) -> CeleryDispatcher:
    """The `JOBS_BACKEND=celery` factory used by `jobs_core.create_dispatcher`."""
    return CeleryDispatcher(
        settings.broker_url,
        settings.queue,
        instrumentation=instrumentation,
        timeout=settings.dispatch_timeout,
        max_payload_bytes=settings.max_payload_bytes,
        **options,
    )


# -- worker side --------------------------------------------------------------------------


MALFORMED_MESSAGE_ERRORS: tuple[type[BaseException], ...] = (
    _KombuDecodeError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
)
"""What Celery's consumer raises while reading a malformed message (before any run)."""


def _strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """Celery's default task strategy, with malformed messages turned into `InvalidTaskError`.

    Celery reads a message's body in the consumer thread; a body of the wrong shape raised
    `ValueError` out of the consumer loop ("Unrecoverable error": the worker stopped, and every
    worker that fetched the message again stopped too), and a body that is not JSON was acked
    and dropped. As `InvalidTaskError`, Celery logs the message, rejects it (no retry) and sends
    `task_rejected`, on which the message is kept in `<queue>.dead` (`_keep_rejected`).
    """
    from celery.worker.strategy import default  # worker side only

    handle = default(task, app, consumer, **options)

    def task_message_handler(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return handle(message, body, *args, **kwargs)
        except InvalidTaskError:
            raise
        except MALFORMED_MESSAGE_ERRORS as exc:
            raise InvalidTaskError(
                f"malformed message for job {task.name!r} (task id "
                f"{_header(message, 'id')}): {type(exc).__name__}: {str(exc)[:200]}"
            ) from exc

    return task_message_handler


def _header(message: Any, name: str) -> Any:
    headers = getattr(message, "headers", None)
    return headers.get(name) if isinstance(headers, dict) else None


def _register_job(
    app: Any,
    job: Job[Any, Any],
    *,
    context: ContextSource,
    instrumentation: Instrumentation | None,
    max_hop: float,
) -> None:
    attempts = job.retry.attempts

    def hop(task: Any, data: Any, not_before: float, retries: int) -> None:
        """Send the message on again, for a wait longer than one visibility window."""
        wait = min(max(not_before - time.time(), 0.0), max_hop)
        task.signature_from_request(
            task.request, (data,), {NOT_BEFORE_KWARG: not_before}, countdown=wait, retries=retries
        ).apply_async()

    def run(self: Any, *args: Any, **kwargs: Any) -> None:
        # One argument, the payload; anything else (a message made by hand) is bad input (C16).
        data = args[0] if len(args) == 1 else list(args)
        not_before = kwargs.get(NOT_BEFORE_KWARG)
        if isinstance(not_before, (int, float)) and not_before - time.time() > 0.001:
            hop(self, data, float(not_before), self.request.retries)
            return
        outcome = run_job_sync(
            job,
            data,
            context=context,
            attempt=self.request.retries,
            dispatch_id=self.request.id,
            backend=BACKEND,
            instrumentation=instrumentation,
        )
        if outcome.completed:
            return
        if outcome.should_retry:
            wait = outcome.retry_in.total_seconds() if outcome.retry_in else 0.0
            if wait > max_hop:
                raise self.retry(
                    args=(data,),
                    kwargs={NOT_BEFORE_KWARG: time.time() + wait},
                    countdown=max_hop,
                    max_retries=attempts,
                )
            raise self.retry(args=(data,), kwargs={}, countdown=wait, max_retries=attempts)
        error = outcome.error
        if isinstance(error, (Ignore, Reject, Retry)) or error is None:
            # Celery would treat these as control flow (drop or requeue): the job gave up.
            raise RuntimeError(f"job {job.name!r} gave up: {error!r}") from error
        raise error

    run.__name__ = "run_" + "".join(c if c.isalnum() else "_" for c in job.name)
    run.__qualname__ = run.__name__
    run.__module__ = __name__
    app.task(
        name=job.name,
        bind=True,
        max_retries=attempts,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        serializer="json",
        typing=False,
        Strategy=f"{__name__}:_strategy",
        shared=False,  # else every Celery app made later in this process gets this task
    )(run)


def _same(a: object, b: object) -> bool:
    return a is b


def _keep_message(app: Any, message: Any, dead: str, what: str) -> None:
    """Republish `message` as it came to the queue `dead`, for an operator to find."""
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                message.body,
                exchange="",
                routing_key=dead,
                headers=message.headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                declare=[Queue(dead, routing_key=dead)],  # kept on AMQP too
                retry=True,
                retry_policy={"max_retries": 5, "interval_start": 0.1},
            )
    except Exception:
        logger.exception("could not keep the message of %s in %s", what, dead)


def _keep_unknown(app: Any, queue: str, instrumentation: Instrumentation | None) -> Any:
    """A `task_unknown` receiver: record the job as failed and keep its message (C17)."""
    dead = dead_letter_queue(queue)

    def on_unknown(
        sender: Any = None, message: Any = None, name: str = "", id: Any = None, **_: Any
    ) -> None:
        if message is None or not _same(getattr(sender, "app", None), app):
            return
        report_unknown_job(
            name, dispatch_id=id, backend=BACKEND, instrumentation=instrumentation, where=dead
        )
        _keep_message(app, message, dead, f"unknown job {name!r}")

    return on_unknown


def _keep_rejected(app: Any, queue: str) -> Any:
    """A `task_rejected` receiver: log a malformed message and keep it in `<queue>.dead`.

    Celery sends `task_rejected` for a message it cannot read as a task (no task name, a body
    that is not JSON or of the wrong shape: see `_strategy`) after it has rejected it.
    """
    dead = dead_letter_queue(queue)

    def on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
        if message is None or not _same(getattr(sender, "app", None), app):
            return
        name, task_id = _header(message, "task"), _header(message, "id")
        logger.error(
            "malformed message (job=%r, task id=%s, %d bytes): not run; kept in %s: %s",
            name,
            task_id,
            len(message.body or b""),
            dead,
            str(exc)[:300] if exc is not None else "not a task message",
        )
        _keep_message(app, message, dead, f"malformed message (job={name!r}, id={task_id})")

    return on_rejected


def create_celery_app(
    registry: JobRegistry[Any],
    *,
    context: ContextSource = None,
    broker_url: str | None = None,
    instrumentation: Instrumentation | None = None,
    queue: str | None = None,
    visibility_timeout: float | None = None,
    **celery_conf: Any,
) -> Any:
    """A Celery app with one task per job of `registry`, for `celery -A module:app worker`.

    `broker_url` and `queue` default to `JOBS_BROKER_URL` / `JOBS_QUEUE`. `celery_conf` is
    passed to `app.conf` last (a `broker_transport_options` dict is merged, not replaced).
    """
    if broker_url is None or queue is None:
        settings = load_settings()
        broker_url = broker_url or settings.broker_url
        queue = queue or settings.queue
    vt = float(visibility_timeout or DEFAULT_VISIBILITY_TIMEOUT)
    if vt <= 0:
        raise JobConfigError(f"visibility_timeout must be positive, got {visibility_timeout!r}")
    conf = _base_conf(broker_url, queue, vt, None)
    extra_transport = celery_conf.pop("broker_transport_options", None) or {}
    conf["broker_transport_options"].update(extra_transport)
    conf.update(celery_conf)
    vt = float(conf["broker_transport_options"].get("visibility_timeout", vt))
    vt = holding_limit(broker_url, vt)  # jobs_core: issue 18

    instrumentation = with_logging(instrumentation)
    app = Celery("jobs_core.worker", set_as_current=False)
    app.conf.update(conf)
    install_worker_patches(app)  # jobs_core: backends/_celery_patches.py (issue 18)
    max_hop = max(max_delay_seconds(vt), 0.001)
    for job in registry:
        _register_job(app, job, context=context, instrumentation=instrumentation, max_hop=max_hop)
    receiver = _keep_unknown(app, queue, instrumentation)
    app.jobs_core_unknown_receiver = receiver  # keeps the (weakly connected) receiver alive
    signals.task_unknown.connect(receiver, weak=True)
    rejected = _keep_rejected(app, queue)
    app.jobs_core_rejected_receiver = rejected
    signals.task_rejected.connect(rejected, weak=True)
    app.jobs_core_queue = queue
    return app


def _pop_option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    rest: list[str] = []
    value: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
            i += 2
            continue
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def run_worker(
    registry: JobRegistry[Any],
    *,
    context: ContextSource,
    settings: JobsSettings,
    argv: list[str],
) -> int:
    """Run a Celery worker for `registry` in the foreground; `argv` goes to `celery worker`.

    Besides Celery's own options, `--visibility-timeout SECONDS` sets the Redis transport's
    visibility timeout, and `--restore-interval SECONDS` how often unacked messages are swept.
    """
    vt, argv = _pop_option(list(argv), "--visibility-timeout")
    restore, argv = _pop_option(argv, "--restore-interval")
    transport: dict[str, Any] = {}
    if restore is not None:
        transport.update(unacked_restore_interval=float(restore), unacked_restore_throttle=1)
    app = create_celery_app(
        registry,
        context=context,
        broker_url=settings.broker_url,
        queue=settings.queue,
        visibility_timeout=float(vt) if vt else None,
        broker_transport_options=transport,
    )
    if not any(a == "-l" or a.startswith("--loglevel") for a in argv):
        argv = ["--loglevel", "INFO", *argv]
    try:
        app.worker_main(argv=["worker", *argv])
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


__all__ = [
    "DEFAULT_VISIBILITY_TIMEOUT",
    "CeleryDispatcher",
    "create_celery_app",
    "create_dispatcher",
    "dead_letter_queue",
    "run_worker",
]
