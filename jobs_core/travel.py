"""Whether a payload survives the trip to a worker as JSON (C10).

Two checks, each as early as it can be: `check_travels` refuses, when a job is defined, a
payload model with a field whose type cannot make the trip (secrets are masked, `bytes` go as
UTF-8 text, excluded fields are not sent); `dump_payload` refuses, at dispatch, a value that
cannot (a failing serialiser, inf or NaN, a value the worker would read back as another).
`payload_json` is the dispatch's one serialisation: for a model whose types vouch for the trip
(`jobs_core.exact`) it skips the second validation `dump_payload` makes.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal, Protocol, Union

import pydantic_core
from pydantic import (
    BaseModel,
    PlainSerializer,
    SecretBytes,
    SecretStr,
    ValidationError,
    WrapSerializer,
)
from pydantic.types import EncodedBytes, Secret

from .errors import JobConfigError, JobPayloadError
from .exact import exact_json, plan_for


class Job(Protocol):
    @property
    def name(self) -> str: ...


def plain_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's error list as plain data (picklable, loggable): `ctx` can hold exceptions."""
    return [{k: v for k, v in e.items() if k != "ctx"} for e in exc.errors(include_url=False)]


def _one_error(kind: str, msg: str, loc: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    return [{"type": kind, "loc": loc, "msg": msg[:300]}]


def payload_json(job: Job, model: BaseModel, fresh: bool = False) -> bytes:
    """`model` as the JSON a worker turns back into an equal model (C10), or the
    `JobPayloadError` of `dump_payload`. `fresh`: the caller validated `model` from a mapping
    just now (a plain model with constraints then needs no validation of its JSON)."""
    plan = plan_for(type(model))
    if plan is not None:
        raw = exact_json(model, plan, fresh)
        if raw is not None:
            return raw
    data = dump_payload(job, model)
    try:
        return pydantic_core.to_json(data)
    except Exception as exc:  # a str with a lone surrogate: not UTF-8
        reason = f"cannot be serialised to JSON: {type(exc).__name__}: {exc}"
        raise JobPayloadError(job.name, _one_error("serialization_error", reason)) from None


def dump_payload(job: Job, model: BaseModel) -> Any:
    """`model` as the JSON-ready data a worker turns back into an equal model (C10).

    Anything else is a `JobPayloadError` naming the field: a serialiser that fails (bytes that
    are not UTF-8 in an `Any` field, a custom serialiser raising, a cycle), a float JSON cannot
    hold (inf, NaN), or a value that would reach the handler changed (a datetime in an `Any`
    field comes back a str, `datetime | str` comes back a str). Values never appear in the
    message: payloads may hold personal data (C23).
    """
    try:
        data = model.model_dump(mode="json", round_trip=True)
    except Exception as exc:  # PydanticSerializationError, UnicodeDecodeError, RecursionError...
        reason = f"cannot be serialised to JSON: {type(exc).__name__}: {exc}"
        raise JobPayloadError(job.name, _one_error("serialization_error", reason)) from None
    for loc, _ in find_values(data, _non_finite_float):
        msg = (
            "inf and NaN are not JSON: send them as strings or refuse them with allow_inf_nan=False"
        )
        raise JobPayloadError(job.name, _one_error("float_not_json", msg, loc))
    try:
        back = type(model).model_validate(data, by_alias=True, by_name=True)
    except Exception as exc:
        errors = plain_errors(exc) if isinstance(exc, ValidationError) else _one_error("", str(exc))
        raise JobPayloadError(
            job.name,
            [
                {
                    **e,
                    "type": "does_not_travel",
                    "msg": f"the worker cannot read it back: {e['msg']}",
                }
                for e in errors
            ],
        ) from None
    if back != model:
        loc, change = _first_change(model.model_dump(), back.model_dump())
        msg = f"would reach the worker changed ({change}): send a value JSON carries as it is"
        raise JobPayloadError(job.name, _one_error("does_not_travel", msg, loc))
    return data


def find_values(
    value: Any, wanted: Callable[[Any], bool], loc: tuple[Any, ...] = ()
) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """The values in JSON-ready `value` (dicts and lists, nested) that are `wanted`, each with
    its location, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from find_values(item, wanted, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from find_values(item, wanted, (*loc, index))
    elif wanted(value):
        yield loc, value


def _non_finite_float(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _first_change(sent: Any, back: Any, loc: tuple[Any, ...] = ()) -> tuple[tuple[Any, ...], str]:
    """Where and how the python form of a payload changed on its way back (types, no values)."""
    if type(sent) is not type(back):
        return loc, f"a {type(sent).__name__} comes back as a {type(back).__name__}"
    if isinstance(sent, dict):
        for key in sent:
            if key not in back:
                return (*loc, key), "it is lost"
            if sent[key] != back[key]:
                return _first_change(sent[key], back[key], (*loc, key))
    elif isinstance(sent, (list, tuple)) and len(sent) == len(back):
        for index, (a, b) in enumerate(zip(sent, back)):
            if a != b:
                return _first_change(a, b, (*loc, index))
    return loc, f"a {type(sent).__name__} comes back with another value"


# -- what cannot travel, known from the model alone ----------------------------------------

_SECRET = (
    "masked as '**********' in JSON",
    "use str and keep the secret elsewhere (send a reference the worker can look up)",
)


def check_travels(job_name: str, model: type[BaseModel]) -> None:
    """Refuse, when the job is defined, a payload model with a field whose JSON form a worker
    cannot turn back into its value: secrets (masked), `bytes` sent as UTF-8 text, fields left
    out of serialisation. A field with its own serialiser is checked at dispatch instead."""
    problem = _model_problem(model, (), frozenset())
    if problem is not None:
        loc, why, fix = problem
        raise JobConfigError(
            f"job {job_name!r}: payload field {_dotted(loc)} cannot travel to a worker as JSON "
            f"({why}): {fix}"
        )


Problem = tuple[tuple[str, ...], str, str]


def _dotted(loc: tuple[str, ...]) -> str:
    return ".".join(loc).replace(".[]", "[]") or "(payload)"


def _model_problem(
    model: type[BaseModel], loc: tuple[str, ...], seen: frozenset[type[Any]]
) -> Problem | None:
    if model in seen:
        return None
    decorators = model.__pydantic_decorators__
    if decorators.model_serializers:
        return None
    custom = {f for d in decorators.field_serializers.values() for f in d.info.fields}
    for name, field in model.model_fields.items():
        if field.exclude is True:
            return (
                (*loc, name),
                "exclude=True",
                "remove exclude=True: a worker gets only what is sent",
            )
        if name in custom or "*" in custom:
            continue
        found = _type_problem(
            field.annotation, list(field.metadata), (*loc, name), model, seen | {model}
        )
        if found is not None:
            return found
    return None


def _type_problem(
    tp: Any,
    metadata: list[Any],
    loc: tuple[str, ...],
    owner: type[BaseModel],
    seen: frozenset[type[Any]],
) -> Problem | None:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extra = typing.get_args(tp)
        return _type_problem(base, [*metadata, *extra], loc, owner, seen)
    if any(isinstance(m, (PlainSerializer, WrapSerializer, EncodedBytes)) for m in metadata):
        return None  # its own JSON form: checked at dispatch
    cls = origin or tp
    if inspect.isclass(cls) and issubclass(cls, (SecretStr, SecretBytes, Secret)):
        return loc, *_SECRET
    if tp is bytes:
        config = owner.model_config
        encoding = config.get("ser_json_bytes", "utf8")
        if encoding == "utf8" or config.get("val_json_bytes", "utf8") != encoding:
            return (
                loc,
                "bytes are sent as UTF-8 text, and data that is not UTF-8 cannot be",
                f"set model_config = ConfigDict(ser_json_bytes='base64', val_json_bytes='base64') "
                f"on {owner.__name__}, or use pydantic's Base64Bytes",
            )
        return None
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        return _model_problem(tp, loc, seen)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type) and tp not in seen:
        try:
            hints = typing.get_type_hints(tp, include_extras=True)
        except Exception:  # unresolvable forward references: nothing to check
            return None
        for field in dataclasses.fields(tp):
            found = _type_problem(hints.get(field.name), [], (*loc, field.name), owner, seen | {tp})
            if found is not None:
                return found
        return None
    if origin is Literal:
        return None
    inner = loc if origin in (Union, types.UnionType) else (*loc, "[]")
    for arg in typing.get_args(tp):
        found = _type_problem(arg, [], inner, owner, seen)
        if found is not None:
            return found
    return None
