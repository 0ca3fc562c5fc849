"""Job definitions: `Job`, `JobRequest`, and how a handler and its payload model are checked."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic

from pydantic import BaseModel
from typing_extensions import TypedDict, TypeVar

from ..calling import callable_name, is_async_callable
from ..dispatch.idempotency import IdempotencyRule, check_rule
from ..errors import JobConfigError
from ..events.event import Event
from ..flow.options import Concurrency, FlowControl, Throttle, flow_control
from ..steps.steps import Steps, StepsSync
from .names import check_name
from .payload import check_travels, validate_payload
from .retry import Retry

P = TypeVar("P", bound=BaseModel)
C = TypeVar("C", default=Any)
"""The app's context type; a registry made without one (`JobRegistry()`) takes any context."""


Handler = (
    Callable[[P, C], "Awaitable[None] | Any | None"]
    | Callable[[P], Any]
    | Callable[[P, C, Steps], Awaitable[Any]]
    | Callable[[P, C, StepsSync], Any]
)
"""`handler(payload, ctx)`, `handler(payload)` for a job that needs no context, or
`handler(payload, ctx, step)` for a job with durable steps (`Steps`, or `StepsSync` when sync)."""
FailureHook = Callable[[BaseException, Any, C], "Awaitable[None] | None"]


class JobOptions(TypedDict, Generic[C], total=False):
    """A job's options besides its name, handler and payload model (`JobRegistry.job`)."""

    retry: Retry | None
    """How often and how far apart it runs again (default `Retry()`: 4 retries)."""
    on_failure: FailureHook[C] | None
    """`hook(error, payload, ctx)`, called once when the job gives up, on every backend."""
    concurrency: Concurrency | None
    """At most this many runs at once (per key), C25."""
    throttle: Throttle | None
    """At most this many starts per period (per key), C26."""
    idempotency: IdempotencyRule | None
    """A payload field's name, or a callable of the payload: each dispatch's key (C27)."""
    on: Event[Any] | None
    """An event (`JobRegistry.event`, or `JOB_FAILED`): the job runs once for each one sent,
    with its data as the payload (C40); it can still be dispatched as any job."""


class Job(Generic[P, C]):
    """One background job: a name, a payload model, a retry policy, a handler, a failure hook,
    its flow control (`flow`: None without concurrency or throttle options) and the rule that
    derives an idempotency key from its payload (`idempotency`, C27).

    Create jobs with `JobRegistry.job` or `JobRegistry.define_job`; a `Job` is immutable once made.
    """

    __slots__ = (
        "flow",
        "handler",
        "handler_is_async",
        "idempotency",
        "name",
        "on",
        "on_failure",
        "payload_model",
        "registry",
        "retry",
        "takes_context",
        "takes_steps",
    )

    def __init__(
        self,
        name: str,
        payload_model: type[P],
        handler: Handler[P, C],
        retry: Retry,
        on_failure: FailureHook[C] | None = None,
        flow: FlowControl | None = None,
        idempotency: IdempotencyRule | None = None,
        on: Event[Any] | None = None,
    ) -> None:
        self.name = name
        self.on = on
        self.registry: Any = None
        """The `JobRegistry` that defined it (its jobs on `JOB_FAILED` hear of its give-ups)."""
        self.payload_model = payload_model
        self.handler = handler
        self.retry = retry
        self.on_failure = on_failure
        self.flow = flow
        self.idempotency = idempotency
        self.handler_is_async = is_async_callable(handler)
        self.takes_steps = _takes_steps(name, handler, self.handler_is_async)
        """Whether the handler is `handler(payload, ctx, step)`: a job with durable steps."""
        self.takes_context = self.takes_steps or _takes_context(name, handler)
        """Whether the handler takes a context (`handler(payload, ctx)`)."""

    def run_handler(self, payload: P, ctx: C, steps: Any = None) -> Any:
        """Call the handler with what it takes; its result (maybe awaitable) is returned."""
        if self.takes_steps:
            return typing.cast(Callable[[P, C, Any], Any], self.handler)(payload, ctx, steps)
        if self.takes_context:
            return typing.cast(Callable[[P, C], Any], self.handler)(payload, ctx)
        return typing.cast(Callable[[P], Any], self.handler)(payload)

    async def call(self, payload: P | Mapping[str, Any], ctx: C | None = None) -> None:
        """Validate `payload` and run the handler once, without retries: how a test runs a job.
        A job with steps runs through a dispatcher (`InlineDispatcher`, or
        `RecordingDispatcher.run_all`), which keeps its steps."""
        if self.takes_steps:
            raise JobConfigError(
                f"job {self.name!r} has steps: run it through a dispatcher, which keeps them "
                "(InlineDispatcher().dispatch(...), or RecordingDispatcher.run_all in a test)"
            )
        model = typing.cast(P, validate_payload(self, payload))
        result = self.run_handler(model, typing.cast(C, ctx))
        if inspect.isawaitable(result):
            await result

    def request(
        self,
        payload: P | Mapping[str, Any],
        *,
        delay: timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> JobRequest[P]:
        """One `dispatch_many` item for this job, with options of its own.

        The payload is checked against this job's model by a type checker (and validated, like
        every payload, when it is dispatched).
        """
        return JobRequest(self, payload, delay, run_at, idempotency_key)

    def __repr__(self) -> str:
        flow = f", flow={self.flow.describe()!r}" if self.flow is not None else ""
        key = f", idempotency={self.idempotency!r}" if self.idempotency is not None else ""
        return (
            f"Job(name={self.name!r}, payload={self.payload_model.__name__}, "
            f"retry={self.retry!r}, handler={callable_name(self.handler)}{flow}{key})"
        )


@dataclass(frozen=True, slots=True)
class JobRequest(Generic[P]):
    """One item of `dispatch_many` with options of its own (a plain `(job, payload)` works too).

    Build one with `job.request(payload, ...)`: a type checker then matches `payload` against
    the job's model, which it cannot do for a `(job, payload)` tuple in a mixed list.
    """

    job: Job[P, Any]
    payload: P | Mapping[str, Any]
    delay: timedelta | None = None
    run_at: datetime | None = None
    idempotency_key: str | None = None
    headers: Mapping[str, str] | None = None
    """What the job's message carries besides its payload (`jobs_core.hooks`): the outbox
    relay passes on the trace context of the transaction that wrote the row."""


def _payload_model_from_handler(
    name: str, handler: Callable[..., Any], default: type[BaseModel] | None = None
) -> type[BaseModel]:
    """The handler's first parameter's model; `default` (the model of the event the job is
    on) when that parameter is not annotated."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError) as exc:
        raise JobConfigError(f"job {name!r}: cannot inspect the handler's signature") from exc
    if not params:
        raise JobConfigError(
            f"job {name!r}: the handler takes no parameters; it must be handler(payload, ctx)"
        )
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # unresolvable forward references: fall back to the raw annotation
        hints = {}
    annotation = hints.get(params[0].name, params[0].annotation)
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    if default is not None and annotation is inspect.Parameter.empty:
        return default
    raise JobConfigError(
        f"job {name!r}: no payload model; annotate the handler's first parameter with a pydantic "
        f"BaseModel subclass or pass payload=Model (found {annotation!r})"
    )


def _takes_steps(name: str, handler: Callable[..., Any], is_async: bool) -> bool:
    """Whether `handler` takes a third parameter, `step: Steps` (async) or `StepsSync` (sync);
    a third parameter of another kind, or of the wrong one, is refused (C34)."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 3:
        return False
    third = positional[2]
    try:
        annotation = typing.get_type_hints(handler).get(third.name, third.annotation)
    except Exception:  # unresolvable forward references: the raw annotation
        annotation = third.annotation
    expected = Steps if is_async else StepsSync
    if annotation is expected:
        return True
    if third.default is not third.empty and annotation not in (Steps, StepsSync):
        return False  # an optional parameter of its own: not a step parameter
    found = "no annotation" if annotation is third.empty else f"{annotation!r}"
    raise JobConfigError(
        f"job {name!r}: a handler is called as handler(payload, ctx) or handler(payload, ctx, "
        f"step); its third parameter {third.name!r} must be annotated {expected.__name__} "
        f"(the steps of {'an async' if is_async else 'a sync'} handler), not {found}"
    )


def _takes_context(name: str, handler: Callable[..., Any]) -> bool:
    """Whether `handler` is `handler(payload, ctx)` rather than `handler(payload)`; a handler
    that can be called as neither is refused, when the job is defined."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # a builtin or C callable: as it always was called
        return True
    for arguments in ((None, None), (None,)):
        try:
            signature.bind(*arguments)
        except TypeError:
            continue
        return len(arguments) == 2
    raise JobConfigError(
        f"job {name!r}: the handler {callable_name(handler)}{signature} cannot be called as "
        "handler(payload, ctx) or handler(payload)"
    )


def _check_model(name: str, payload: Any) -> type[BaseModel]:
    if inspect.isclass(payload) and issubclass(payload, BaseModel):
        return payload
    raise JobConfigError(
        f"job {name!r}: payload= must be a pydantic BaseModel subclass, got {payload!r}"
    )


def make_job(
    name: str,
    *,
    handle: Handler[P, C],
    payload: type[P] | None = None,
    retry: Retry | None = None,
    on_failure: FailureHook[C] | None = None,
    concurrency: Concurrency | None = None,
    throttle: Throttle | None = None,
    idempotency: IdempotencyRule | None = None,
    on: Event[Any] | None = None,
) -> Job[P, C]:
    """A `Job` from its parts, every check done here (C1-C3, C10, C25-C27, C40), never at a
    worker."""
    check_name(name, "job")
    if not callable(handle):
        raise JobConfigError(f"job {name!r}: handle= must be callable, got {handle!r}")
    if retry is None:
        retry = Retry()
    elif not isinstance(retry, Retry):
        raise JobConfigError(f"job {name!r}: retry= must be a Retry, got {retry!r}")
    if on_failure is not None and not callable(on_failure):
        raise JobConfigError(f"job {name!r}: on_failure= must be callable, got {on_failure!r}")
    if on is not None and not isinstance(on, Event):
        raise JobConfigError(f"job {name!r}: on= takes an Event (jobs.event), got {on!r}")
    model = (
        _check_model(name, payload)
        if payload is not None
        else _payload_model_from_handler(name, handle, on.model if on is not None else None)
    )
    check_travels(name, model)
    if on is not None:
        if model is not on.model:
            raise JobConfigError(
                f"job {name!r}: it runs on event {on.name!r}, whose data is a "
                f"{on.model.__name__}; its payload model must be that model, not "
                f"{model.__name__}"
            )
    flow = flow_control(name, model, concurrency, throttle)
    rule = check_rule(name, model, idempotency)
    job: Job[P, C] = Job(
        name, typing.cast(type[P], model), handle, retry, on_failure, flow, rule, on
    )
    return job
