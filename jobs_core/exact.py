"""Payload models whose JSON makes the trip to a worker exactly, known from their types alone.

`travel.dump_payload` proves that a payload travels (C10) by validating its JSON form back and
comparing: a second validation and a deep comparison on every dispatch. For a *plain* model the
types prove it instead, and a dispatch only checks what its types cannot (`exact_json`):

- plain: every field is `str`, `int`, `bool`, `float`, `None`, a `Literal` of those, a `list` or
  `str`-keyed `dict` of plain values, `X | None`, or a plain model; and no model in it has a
  validator, serialiser, computed field, private attribute, `model_post_init`, extra fields, a
  field left out, an alias that is not the same both ways or a default that is not a valid
  value (defaults are not validated). Anything else is not plain.
- `Plan.exact` refuses a missing field, a nested model of another class than its field's (a
  subclass would reach the worker as the parent) and a float that is inf or NaN (JSON has
  neither);
- a value of the wrong type (set by assignment or `model_construct`) fails serialisation with
  warnings as errors. A model this dispatch validated from a mapping just now, holding no
  nested model instance (validation keeps one as it was given), needs no such check: every
  value is the validator's;
- a plain model with constraints (`Field(gt=0)`, a `Literal`) not validated just now, or
  holding nested model instances, has its JSON validated once, to know the values still meet
  them.

The shortcut only saves time: whatever it cannot vouch for takes the full check.
"""

from __future__ import annotations

import math
import operator
import types
import typing
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from annotated_types import BaseMetadata
from pydantic import BaseModel, RootModel, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_core import SchemaValidator

Check = Callable[[Any], bool]

_PRIMITIVES = (str, int, bool)


class _NotPlain(Exception):
    pass


@dataclass
class _Flags:
    constrained: bool = False
    nested: bool = False
    """Set when a type holds a model (read and reset per field by `_model_check`)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What a dispatch of a plain model must still check (see the module docstring)."""

    exact: _ModelCheck
    """True when a value is exactly of the model's class, every field set, every nested model
    exactly of its field's class and every float finite."""
    constrained: bool


_PLANS: weakref.WeakKeyDictionary[type[BaseModel], Plan | None] = weakref.WeakKeyDictionary()


def plan_for(model: type[BaseModel]) -> Plan | None:
    """The plan of a plain model class, or None when it is not plain (cached per class)."""
    try:
        return _PLANS[model]
    except KeyError:
        pass
    flags = _Flags()
    try:
        exact: _ModelCheck | None = _model_check(model, flags, frozenset())
    except _NotPlain:
        exact = None
    plan = None if exact is None else Plan(exact, flags.constrained)
    _PLANS[model] = plan
    return plan


def exact_json(model: BaseModel, plan: Plan, fresh: bool) -> bytes | None:
    """`model`'s JSON when `plan` vouches that a worker reads it back into an equal model, else
    None. `fresh`: this dispatch validated `model` from a mapping just now."""
    cls = type(model)
    try:
        if not plan.exact(model):
            return None
    except TypeError:  # a float field holding what is not a number: the full check says
        return None
    serializer = cls.__pydantic_serializer__
    nested = plan.exact.holds_models(model)
    if fresh and not nested:  # every value is the validator's: of its field's type
        raw: bytes = serializer.to_json(model, round_trip=True)
        return raw
    try:
        raw = serializer.to_json(model, round_trip=True, warnings="error")
    except Exception:  # a value of the wrong type, set by assignment or model_construct
        return None
    if plan.constrained:  # not just validated, or holding models validation kept as given
        try:
            cls.__pydantic_validator__.validate_json(raw, by_alias=True, by_name=True)
        except Exception:
            return None
    return raw


class _ModelCheck:
    """`Plan.exact` for one model class: exactly that class, every field set, and the checks
    of its fields passed."""

    __slots__ = ("checks", "cls", "count", "model_fields")

    def __init__(
        self, cls: type[BaseModel], checks: list[tuple[str, Check]], model_fields: list[str]
    ) -> None:
        self.cls = cls
        self.count = len(cls.model_fields)
        self.checks = checks
        self.model_fields = model_fields
        """The fields whose type holds a model."""

    def holds_models(self, value: Any) -> bool:
        """Whether `value` (an instance of `cls`) may hold a nested model instance: a field
        whose type holds one is not empty (None, [], {})."""
        values = value.__dict__
        for name in self.model_fields:
            if values[name]:
                return True
        return False

    def __call__(self, value: Any) -> bool:
        if type(value) is not self.cls:
            return False
        values = value.__dict__
        if len(values) != self.count:
            return False
        for name, check in self.checks:
            if not check(values[name]):
                return False
        return True

    def each(self, values: Collection[Any]) -> bool:
        """`all(map(self, values))`, for a model without checks of its own in C loops (a list
        of thousands of small models is a common large payload)."""
        if self.checks or len(values) < 16:  # building the sets costs more for a few
            return all(map(self, values))
        return set(map(type, values)) == {self.cls} and set(map(len, map(_VARS, values))) == {
            self.count
        }


_VARS = operator.attrgetter("__dict__")


def _each(item: Check) -> Callable[[Collection[Any]], bool]:
    return item.each if isinstance(item, _ModelCheck) else lambda values: all(map(item, values))


def _model_check(cls: type[BaseModel], flags: _Flags, seen: frozenset[type[Any]]) -> _ModelCheck:
    if cls in seen or not _model_is_plain(cls):
        raise _NotPlain
    fields = cls.model_fields
    names = set(fields)
    checks: list[tuple[str, Check]] = []
    model_fields: list[str] = []
    nested, flags.nested = flags.nested, False
    for name, field in fields.items():
        _check_field(name, field, names)
        check = _type_check(field.annotation, list(field.metadata), flags, seen | {cls})
        if check is not None:
            checks.append((name, check))
        if flags.nested:
            model_fields.append(name)
            nested, flags.nested = True, False
    flags.nested = nested
    return _ModelCheck(cls, checks, model_fields)


def _model_is_plain(cls: type[BaseModel]) -> bool:
    if not cls.__pydantic_complete__ or issubclass(cls, RootModel):
        return False
    config = cls.model_config
    if config.get("extra") == "allow" or config.get("json_encoders"):
        return False
    decorators = cls.__pydantic_decorators__
    if (
        decorators.validators
        or decorators.field_validators
        or decorators.root_validators
        or decorators.model_validators
        or decorators.field_serializers
        or decorators.model_serializers
        or decorators.computed_fields
    ):
        return False
    return not cls.__private_attributes__ and cls.__pydantic_post_init__ is None


def _check_field(name: str, field: FieldInfo, names: set[str]) -> None:
    if field.exclude or getattr(field, "exclude_if", None) is not None or field.discriminator:
        raise _NotPlain
    if not _default_is_valid(field):
        raise _NotPlain  # sent as it is (defaults are not validated): the worker would refuse it
    aliases = {field.alias, field.validation_alias, field.serialization_alias} - {None}
    if len(aliases) > 1 or any(not isinstance(a, str) or a in names - {name} for a in aliases):
        raise _NotPlain  # read back under another name, or under another field's name


def _default_is_valid(field: FieldInfo) -> bool:
    """Whether the field's default (pydantic does not validate it) is a valid value of the
    field, as JSON too: `x: str = None` or `Field(default=0, ge=1)` would reach a worker that
    refuses it."""
    if field.is_required():
        return True
    try:
        default = field.get_default(call_default_factory=True, validated_data={})
        tp: Any = field.annotation
        if field.metadata:
            args = (tp, *field.metadata)
            tp = Annotated[args]
        adapter: TypeAdapter[Any] = TypeAdapter(tp)
        adapter.dump_json(default, warnings="error")
        return bool(adapter.validate_python(default) == default)
    except Exception:
        return False


def _type_check(
    tp: Any, metadata: list[Any], flags: _Flags, seen: frozenset[type[Any]]
) -> Check | None:
    """What a value of plain type `tp` must pass besides its serialisation (exact nested
    models, finite floats), or None for nothing; raises `_NotPlain` for any other type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _type_check(args[0], [*metadata, *args[1:]], flags, seen)
    for item in metadata:
        if not isinstance(item, BaseMetadata):  # a validator, a serialiser, a discriminator...
            raise _NotPlain
        flags.constrained = True
    if tp in _PRIMITIVES or tp is None or tp is type(None):
        return None
    if tp is float:
        return math.isfinite
    if origin is Literal:
        if not all(a is None or type(a) in _PRIMITIVES for a in args):
            raise _NotPlain
        flags.constrained = True
        return None
    if origin is list and len(args) == 1:
        item = _type_check(args[0], [], flags, seen)
        if item is None:
            return None
        items = _each(item)
        return lambda v: type(v) is list and items(v)
    if origin is dict and len(args) == 2 and args[0] is str:
        value = _type_check(args[1], [], flags, seen)
        if value is None:
            return None
        values = _each(value)
        return lambda v: type(v) is dict and values(v.values())
    if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        (other,) = (a for a in args if a is not type(None))
        inner = _type_check(other, [], flags, seen)
        return None if inner is None else lambda v: v is None or inner(v)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        flags.nested = True
        return _model_check(tp, flags, seen)
    raise _NotPlain


# -- validating a mapping straight into the JSON-ready data of a plain model ------------------

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer every backend carries exactly: Inngest canonicalises event JSON through
doubles, so a larger one arrives rounded (2**53 + 1 came back as 2**53)."""

_NOT_SCHEMAS = frozenset({"metadata", "config", "default", "serialization", "expected", "cls"})
"""Keys of a core schema whose values are data, not schemas."""

_WIRE: weakref.WeakKeyDictionary[type[BaseModel], SchemaValidator | None] = (
    weakref.WeakKeyDictionary()
)


def wire_validator(model: type[BaseModel]) -> SchemaValidator | None:
    """For a plain model: its own validator, but giving the model's JSON-ready data (a dict
    where the model gives an instance) instead of instances; None for any other model.

    A plain model's instances hold nothing their dict form does not, so validating a mapping
    into that dict and serialising it gives the JSON the model path gives, at a third of the
    cost (no instances to build, and none for the garbage collector to walk). It is stricter,
    never looser: it refuses a model instance nested in the mapping, an inf or NaN float and an
    integer beyond ±(2**53 - 1), so that what it accepts needs no further check; a caller
    takes the model path for whatever it refuses, which then says why (cached per class).
    """
    try:
        return _WIRE[model]
    except KeyError:
        pass
    validator = None
    schema = model.__pydantic_core_schema__
    top = schema["schema"] if schema["type"] == "definitions" else schema
    if plan_for(model) is not None and top["type"] == "model" and top["cls"] is model:
        try:
            validator = SchemaValidator(_as_data(schema))
        except Exception:  # not plain, or a schema this conversion does not know: model path
            pass
    _WIRE[model] = validator
    return validator


def _as_data(schema: Any) -> Any:
    """`schema` (part of a core schema) with every model a typed dict of the same fields and
    config, every float finite and every integer within ±(2**53 - 1)."""
    if isinstance(schema, list):
        return [_as_data(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    if kind == "model":
        return _typed_dict(schema)
    if isinstance(kind, str) and kind.startswith("function"):
        raise _NotPlain  # a validator of its own: only the model path runs it
    out = {k: v if k in _NOT_SCHEMAS else _as_data(v) for k, v in schema.items()}
    if kind == "float":
        out["allow_inf_nan"] = False
    elif kind == "int":
        out["le"] = min(out.get("le", MAX_SAFE_INTEGER), MAX_SAFE_INTEGER)
        out["ge"] = max(out.get("ge", -MAX_SAFE_INTEGER), -MAX_SAFE_INTEGER)
    elif kind == "literal" and any(
        type(v) is int and abs(v) > MAX_SAFE_INTEGER for v in schema["expected"]
    ):
        raise _NotPlain
    elif kind == "default" and not _is_data(schema.get("default")):
        raise _NotPlain  # a default model instance: the dict would hold it as it is
    return out


def _typed_dict(schema: dict[str, Any]) -> dict[str, Any]:
    fields = schema["schema"]
    if (
        schema.get("root_model")
        or schema.get("post_init")
        or schema.get("custom_init")  # an __init__ of its own: only the model path calls it
        or fields["type"] != "model-fields"
    ):
        raise _NotPlain
    typed: dict[str, Any] = {
        "type": "typed-dict",
        "fields": {
            name: {
                **{k: v for k, v in field.items() if k not in ("type", "frozen", "schema")},
                "type": "typed-dict-field",
                "schema": _as_data(field["schema"]),
                "required": field["schema"]["type"] != "default",
            }
            for name, field in fields["fields"].items()
        },
    }
    for key in ("config", "ref", "strict", "extra_behavior"):
        if key in schema or key in fields:
            typed[key] = schema.get(key, fields.get(key))
    return typed


def _is_data(value: Any) -> bool:
    if value is None or type(value) in (str, int, bool, float):
        return True
    if type(value) is list:
        return all(map(_is_data, value))
    if type(value) is dict:
        return all(map(_is_data, value.values()))
    return False
