"""A job's payload: validated at dispatch, sent as JSON, parsed again where the job runs.

The contract's payload clauses, in the order a payload meets them:

- **C10, when a job is defined** (`check_travels`): a payload model with a field whose JSON form
  a worker cannot turn back into its value (a secret is masked, `bytes` go as UTF-8 text, a
  field left out of serialisation) is refused.
- **C4, C5, at dispatch** (`validate_payload`): the payload is an instance of the job's own
  model or a mapping of its fields, and fits the model; anything else is a `JobPayloadError`
  naming the job, with pydantic's errors.
- **C10, at dispatch** (`encode_payload`): the one serialisation of a dispatch. The JSON must
  come back, at the worker, as a model equal to the one dispatched, so a value that would not
  (a failing serialiser, inf or NaN, a value read back as another type) is refused, naming the
  field; so is an integer beyond ±(2**53 - 1), which Inngest rounds, and a payload over the
  size limit. A model this dispatch validated from a mapping just now, whose field types JSON
  carries exactly (`_carried_exactly`), needs no proof; any other proves it by the round trip.
- **C16, at the worker** (`parse_payload`): whatever arrived (a dict, JSON text or bytes) that
  does not fit the model is a `JobPayloadError`, which gives the job up instead of retrying it.

Values never appear in error messages: payloads may hold personal data (C23).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal, Protocol, Union

import pydantic_core
from annotated_types import BaseMetadata
from pydantic import (
    BaseModel,
    PlainSerializer,
    RootModel,
    SecretBytes,
    SecretStr,
    TypeAdapter,
    ValidationError,
    WrapSerializer,
)
from pydantic.types import EncodedBytes, Secret

from ..errors import JobConfigError, JobPayloadError


class Job(Protocol):
    """What payload handling needs of a job: its name (for errors) and its payload model."""

    @property
    def name(self) -> str: ...

    @property
    def payload_model(self) -> type[BaseModel]: ...


PAYLOAD_MASK = "<payload>"
"""How a payload is shown in log lines and monitoring tools: payloads may hold personal data or
secrets (C23), and one large payload would make every log line as large."""

DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
"""Largest JSON payload accepted at dispatch: Inngest's smallest event limit, so that a job
that dispatches on one backend dispatches on all of them."""

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer every backend carries exactly: Inngest canonicalises event JSON through
doubles, so a larger one arrives rounded (2**53 + 1 came back as 2**53)."""

_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_SIXTEEN_DIGITS = b"0" * 16
"""An integer beyond MAX_SAFE_INTEGER (16 digits) has at least 16 digits in a row: only JSON
holding such a run is walked for one (found as 16 zeros once every digit is a zero: a tenth
of a regular expression's cost, which backtracks at each digit)."""

_NOT_FINITE = re.compile(rb"Infinity|NaN")
"""What a serialiser set to write inf and NaN as constants writes: not JSON."""


def plain_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's error list as plain data (picklable, loggable): `ctx` can hold exceptions."""
    return [{k: v for k, v in e.items() if k != "ctx"} for e in exc.errors(include_url=False)]


def _error(job_name: str, kind: str, msg: str, loc: tuple[Any, ...] = ()) -> JobPayloadError:
    return JobPayloadError(job_name, [{"type": kind, "loc": loc, "msg": msg[:300]}])


# -- C10, when a job is defined ------------------------------------------------------------

_SECRET = (
    "masked as '**********' in JSON",
    "use str and keep the secret elsewhere (send a reference the worker can look up)",
)
Problem = tuple[tuple[str, ...], str, str]


def check_travels(job_name: str, model: type[BaseModel]) -> None:
    """Refuse, when the job is defined, a payload model with a field whose JSON form a worker
    cannot turn back into its value: secrets (masked), `bytes` sent as UTF-8 text, fields left
    out of serialisation. A field with its own serialiser is checked at dispatch instead."""
    problem = _model_problem(model, (), frozenset())
    if problem is not None:
        loc, why, fix = problem
        dotted = ".".join(loc).replace(".[]", "[]") or "(payload)"
        raise JobConfigError(
            f"job {job_name!r}: payload field {dotted} cannot travel to a worker as JSON "
            f"({why}): {fix}"
        )


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


# -- C4, C5: validation at dispatch --------------------------------------------------------


def validate_payload(job: Job, payload: Any) -> BaseModel:
    """Return `payload` as an instance of the job's model, or raise `JobPayloadError` (C4, C5)."""
    model: type[BaseModel] = job.payload_model
    if isinstance(payload, model):
        return payload
    if isinstance(payload, Mapping) and not isinstance(payload, BaseModel):
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            raise JobPayloadError(job.name, plain_errors(exc)) from None
        except Exception as exc:  # a validator raising what pydantic does not wrap
            reason = f"validating raised {type(exc).__name__}: {str(exc)[:200]}"
            raise _error(job.name, "validator_error", reason) from exc
    expected = f"an instance of {model.__name__} or a mapping of its fields"
    raise _shape_error(job.name, payload, expected)


def _shape_error(job_name: str, got: Any, expected: str) -> JobPayloadError:
    kind = type(got).__name__
    error = {"type": "model_type", "loc": (), "msg": f"expected {expected}, got {kind}"}
    return JobPayloadError(job_name, [{**error, "input": kind}])


# -- C10: the one serialisation at dispatch --------------------------------------------------


def encode_payload(
    job: Job, model: BaseModel, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, *, fresh: bool = False
) -> bytes:
    """The JSON a dispatch sends, which a worker turns back into a model equal to `model`; or a
    `JobPayloadError` naming the field that would not make the trip, an integer beyond
    ±(2**53 - 1), or a size over `max_bytes` (no truncation). `fresh`: this dispatch validated
    `model` from a mapping just now."""
    try:
        raw: bytes = model.__pydantic_serializer__.to_json(model, round_trip=True, warnings=False)
    except Exception as exc:  # PydanticSerializationError, UnicodeDecodeError, RecursionError...
        reason = f"cannot be serialised to JSON: {type(exc).__name__}: {exc}"
        raise _error(job.name, "serialization_error", reason) from None
    if _SIXTEEN_DIGITS in raw.translate(_DIGITS_AS_ZEROS):
        unsafe = list(_unsafe_integers(pydantic_core.from_json(raw)))
        if unsafe:
            raise JobPayloadError(job.name, unsafe)
    if not (fresh and _carried_exactly(type(model))):
        _prove_round_trip(job, model, raw)
    if max_bytes and len(raw) > max_bytes:
        msg = (
            f"payload is {len(raw)} bytes as JSON; the limit is {max_bytes} bytes "
            "(JOBS_MAX_PAYLOAD_BYTES): store large data elsewhere and send a reference"
        )
        error = {"type": "payload_too_large", "loc": (), "msg": msg, "input": len(raw)}
        raise JobPayloadError(job.name, [error])
    return raw


def to_wire(job: Job, model: BaseModel, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Any:
    """The JSON-ready form (dicts, lists, str, numbers) of what `encode_payload` sends."""
    return pydantic_core.from_json(encode_payload(job, model, max_bytes))


def _unsafe_integers(value: Any) -> Iterator[dict[str, Any]]:
    for loc, number in find_values(value, _unsafe_integer):
        yield {
            "type": "int_unsafe",
            "loc": loc,
            "msg": f"integer {number} is beyond ±(2**53 - 1), which not every backend carries "
            "exactly (Inngest rounds it): send it as a string",
            "input": number,
        }


def _unsafe_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER


def _prove_round_trip(job: Job, model: BaseModel, raw: bytes) -> None:
    """Refuse `raw` unless the worker reads it back as a model equal to `model`, saying where
    and how it would not (types, never values)."""
    if _NOT_FINITE.search(raw) or b"null" in raw:  # inf and NaN are written as null by default
        try:
            values = model.model_dump(mode="python", warnings=False)
        except Exception:  # the JSON serialiser worked: the round trip below judges it
            values = None
        for loc, _ in find_values(values, _non_finite_float):
            msg = "inf and NaN are not JSON: send them as strings, or refuse them with allow_inf_nan=False"
            raise _error(job.name, "float_not_json", msg, loc)
    try:  # as a worker reads it: the JSON parsed first (a broker hands over a dict)
        back = type(model).model_validate(pydantic_core.from_json(raw), by_alias=True, by_name=True)
    except ValidationError as exc:
        errors = plain_errors(exc)
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
        loc, change = _first_change(model.model_dump(warnings=False), back.model_dump())
        msg = f"would reach the worker changed ({change}): send a value JSON carries as it is"
        raise _error(job.name, "does_not_travel", msg, loc)


def find_values(
    value: Any, wanted: Callable[[Any], bool], loc: tuple[Any, ...] = ()
) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """The values in `value` (dicts, lists and tuples, nested) that are `wanted`, each with its
    location, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from find_values(item, wanted, (*loc, key))
    elif isinstance(value, (list, tuple)):
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


_EXACT_TYPES = (str, int, bool, type(None))


@functools.lru_cache(maxsize=1024)
def _carried_exactly(model: type[BaseModel]) -> bool:
    """Whether a freshly validated instance of `model` is sure to come back equal from its
    JSON: every field of a type JSON carries exactly (`str`, `int`, `bool`, `None`, a `Literal`
    of those, lists and `str`-keyed dicts of them, `X | None`, such models), with constraints at
    most, and nothing that changes a value on its way out or in (validators, serialisers,
    computed fields, extra fields, aliases that differ, a default that is not a valid value).
    Floats are not (inf and NaN become null), nor is anything else: those prove their trip."""
    try:
        return _model_exact(model, frozenset())
    except TypeError:  # an unhashable or odd annotation: prove the trip instead
        return False


def _model_exact(model: type[BaseModel], seen: frozenset[type[Any]]) -> bool:
    if model in seen:
        return False  # recursive models prove their trip
    if not model.__pydantic_complete__ or issubclass(model, RootModel):
        return False
    config = model.model_config
    decorators = model.__pydantic_decorators__
    if (
        config.get("extra") == "allow"
        or config.get("json_encoders")
        or model.__private_attributes__
        or model.__pydantic_post_init__ is not None
        or decorators.validators
        or decorators.field_validators
        or decorators.root_validators
        or decorators.model_validators
        or decorators.field_serializers
        or decorators.model_serializers
        or decorators.computed_fields
    ):
        return False
    names = set(model.model_fields)
    for name, field in model.model_fields.items():
        if field.exclude or getattr(field, "exclude_if", None) is not None or field.discriminator:
            return False
        aliases = {field.alias, field.validation_alias, field.serialization_alias} - {None}
        if len(aliases) > 1 or any(not isinstance(a, str) or a in names - {name} for a in aliases):
            return False
        if not _type_exact(field.annotation, list(field.metadata), seen | {model}):
            return False
        if not field.is_required() and not _default_is_valid(field):
            return False
    return True


def _type_exact(tp: Any, metadata: list[Any], seen: frozenset[type[Any]]) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _type_exact(args[0], [*metadata, *args[1:]], seen)
    if not all(isinstance(m, BaseMetadata) for m in metadata):
        return False  # a validator, a serialiser, a discriminator...
    if tp in _EXACT_TYPES or tp is None:
        return True
    if origin is Literal:
        return all(a is None or type(a) in (str, int, bool) for a in args)
    if origin is list and len(args) == 1:
        return _type_exact(args[0], [], seen)
    if origin is dict and len(args) == 2 and args[0] is str:
        return _type_exact(args[1], [], seen)
    if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        (other,) = (a for a in args if a is not type(None))
        return _type_exact(other, [], seen)
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        return _model_exact(tp, seen)
    return False


def _default_is_valid(field: Any) -> bool:
    """Whether a field's default (pydantic does not validate it) is a valid value of its type:
    `x: str = None` would reach a worker that refuses it."""
    try:
        default = field.get_default(call_default_factory=True, validated_data={})
        annotation: Any = field.annotation
        if field.metadata:
            args = (annotation, *field.metadata)
            annotation = Annotated[args]
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        return bool(adapter.validate_python(default) == default)
    except Exception:
        return False


# -- C16: parsing at the worker ------------------------------------------------------------


def parse_payload(job: Job, raw: Any) -> BaseModel:
    """Worker side: turn what the backend delivered (dict, JSON text or bytes) into the model.

    Any failure, whatever its cause (bad JSON, wrong shape, schema drift), is a `JobPayloadError`
    so that the worker gives up on the message instead of retrying it (C16).
    """
    model: type[BaseModel] = job.payload_model
    try:
        if isinstance(raw, (str, bytes, bytearray)):
            return model.model_validate_json(raw, by_alias=True, by_name=True)
        if isinstance(raw, Mapping):
            return model.model_validate(raw, by_alias=True, by_name=True)
    except ValidationError as exc:
        raise JobPayloadError(job.name, plain_errors(exc)) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise _error(job.name, "invalid_payload", str(exc)) from None
    raise _shape_error(job.name, raw, "a JSON object")


# -- a payload field as a key ----------------------------------------------------------------


def payload_field(data: Any, name: str) -> Any:
    """The field `name` of a payload as it travels (JSON-ready data, or JSON text), or None."""
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    return data.get(name) if isinstance(data, Mapping) else None


def require_field(job_name: str, model: type[BaseModel], option: str, name: str) -> None:
    """Refuse, when a job is defined, an option naming `name` that is not a field of `model`."""
    if name not in model.model_fields:
        fields = ", ".join(model.model_fields) or "none"
        raise JobConfigError(
            f"job {job_name!r}: {option}={name!r} is not a field of {model.__name__} "
            f"(fields: {fields})"
        )


def key_text(value: Any) -> str:
    """A payload field's value as a limit's key or an idempotency key: text as it is, anything
    else as compact JSON (so 42 and "42" stay apart from `[42]`)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
