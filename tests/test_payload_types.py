"""Payload types and values that cannot travel to a worker as JSON (issue 18, C4, C10).

A model whose field type cannot make the trip is a `JobConfigError` when the job is defined,
naming the job, the field and the fix; a value that cannot is a `JobPayloadError` at dispatch
with a `failed` event, never a bare exception. What can travel arrives equal, aliases included.
Backend-independent: the dispatches here go through the inline backend (the conformance suite
checks the dispatch errors on every backend).
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Literal

import pytest
from pydantic import (
    Base64Bytes,
    BaseModel,
    ConfigDict,
    Field,
    Json,
    SecretBytes,
    SecretStr,
    computed_field,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.types import Secret

from jobs_core import JobConfigError, JobPayloadError, JobRegistry, JobsError
from jobs_core.backends.inline import InlineDispatcher
from jobs_core.dispatch.dispatcher import prepare_dispatch
from jobs_core.jobs.payload import (
    _carried_exactly,
    encode_payload,
    parse_payload,
    validate_payload,
)
from jobs_core.testing import RecordingDispatcher, RecordingInstrumentation

SECRET_FIX = "use str and keep the secret elsewhere"
BYTES_FIX = "ConfigDict(ser_json_bytes='base64', val_json_bytes='base64')"


class Attachment(BaseModel):
    name: str
    data: bytes


@dataclasses.dataclass
class Login:
    user: str
    password: SecretStr


class WithSecret(BaseModel):
    token: SecretStr


class WithSecretBytes(BaseModel):
    key: SecretBytes


class WithGenericSecret(BaseModel):
    pin: Secret[int]


class WithOptionalSecret(BaseModel):
    token: SecretStr | None = None


class WithBytes(BaseModel):
    blob: bytes


class WithNestedBytes(BaseModel):
    files: list[Attachment]


class WithBytesMap(BaseModel):
    parts: dict[str, bytes]


class WithDataclass(BaseModel):
    login: Login


class WithExcluded(BaseModel):
    text: str
    note: str = Field(default="", exclude=True)


class HalfEncoded(BaseModel):
    model_config = ConfigDict(ser_json_bytes="base64")  # val_json_bytes left utf8
    blob: bytes


REFUSED = [
    (WithSecret, "token", SECRET_FIX),
    (WithSecretBytes, "key", SECRET_FIX),
    (WithGenericSecret, "pin", SECRET_FIX),
    (WithOptionalSecret, "token", SECRET_FIX),
    (WithBytes, "blob", BYTES_FIX),
    (WithNestedBytes, "files[].data", BYTES_FIX),
    (WithBytesMap, "parts[]", BYTES_FIX),
    (WithDataclass, "login.password", SECRET_FIX),
    (WithExcluded, "note", "remove exclude=True"),
    (HalfEncoded, "blob", BYTES_FIX),
]


@pytest.mark.parametrize(("model", "field", "fix"), REFUSED, ids=[m.__name__ for m, *_ in REFUSED])
def test_a_type_that_cannot_travel_is_refused_when_the_job_is_defined(
    model: type[BaseModel], field: str, fix: str
) -> None:
    jobs = JobRegistry[Any]()
    with pytest.raises(JobConfigError) as caught:
        jobs.define_job("types.refused", payload=model, handle=lambda p, c: None)
    message = str(caught.value)
    assert "'types.refused'" in message
    assert f"payload field {field} cannot travel" in message, message
    assert fix in message
    with pytest.raises(JobConfigError):  # the decorator form checks the same

        @jobs.job("types.refused2")
        def handler(payload: model, ctx: Any) -> None:  # type: ignore[valid-type]
            pass


# -- what can travel arrives equal ---------------------------------------------------------


class Encoded(BaseModel):
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
    blob: bytes
    files: list[Attachment] = []  # Attachment's own config decides its bytes: refused?


class EncodedFiles(BaseModel):
    model_config = ConfigDict(ser_json_bytes="hex", val_json_bytes="hex")
    blob: bytes


class B64(BaseModel):
    blob: Base64Bytes


class RevealedSecret(BaseModel):
    token: SecretStr

    @field_serializer("token", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class Aliased(BaseModel):
    user_id: int = Field(alias="userId")
    name: str = Field(validation_alias="fullName", serialization_alias="displayName")


class AliasedOut(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)
    user_id: int = Field(alias="userId")
    inner: Aliased


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    numbers: Json[list[int]]
    amount: Decimal
    when: datetime
    naive: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return sum(self.numbers)


def test_a_model_with_its_own_encoding_for_bytes_is_accepted_except_where_a_nested_one_is_not() -> (
    None
):
    jobs = JobRegistry[Any]()
    with pytest.raises(JobConfigError, match=r"files\[\]\.data .*on Attachment"):
        jobs.define_job("types.encoded", payload=Encoded, handle=lambda p, c: None)


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (EncodedFiles, {"blob": b"\xff\x00\xfe"}),
        (B64, {"blob": "/wD+"}),
        (RevealedSecret, {"token": "s3cret"}),
        (Aliased, {"userId": 7, "fullName": "Ada"}),
        (AliasedOut, {"userId": 7, "inner": {"userId": 8, "fullName": "Bo"}}),
        (
            Strict,
            {
                "numbers": "[1, 2, 3]",
                "amount": Decimal("12345678901234567890.000000001"),
                "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                "naive": datetime(2026, 1, 2, 3, 4, 5),
            },
        ),
    ],
    ids=[
        "bytes-hex",
        "Base64Bytes",
        "secret-with-serializer",
        "aliases",
        "serialize-by-alias",
        "json-decimal-computed",
    ],
)
def test_what_can_travel_arrives_equal(model: type[BaseModel], payload: dict[str, Any]) -> None:
    received: list[BaseModel] = []
    jobs = JobRegistry[Any]()
    job = jobs.define_job("types.ok", payload=model, handle=lambda p, c: received.append(p))
    dispatcher = InlineDispatcher(context=None)
    receipt = dispatcher.dispatch_sync(job, payload)
    assert receipt.job_name == "types.ok"
    assert received == [model.model_validate(payload)]
    # The worker reads the JSON a durable backend carries (parsed, or as text) the same way.
    prepared = dispatcher.prepare(job, payload)
    assert parse_payload(job, prepared.data) == received[0]
    assert parse_payload(job, json.dumps(prepared.data)) == received[0]


def test_a_worker_reads_a_payload_by_field_names_or_by_aliases() -> None:
    jobs = JobRegistry[Any]()
    job = jobs.define_job("types.names", payload=Aliased, handle=lambda p, c: None)
    by_name = parse_payload(job, {"user_id": 1, "name": "Ada"})
    by_alias = parse_payload(job, {"userId": 1, "fullName": "Ada"})
    assert by_name == by_alias == Aliased.model_validate({"userId": 1, "fullName": "Ada"})


# -- values that cannot travel: JobPayloadError at dispatch, with a `failed` event ------------


class Measured(BaseModel):
    value: float


class Loose(BaseModel):
    extra: Any = None


class Either(BaseModel):
    when: datetime | str


class Chained(BaseModel):
    items: list[Any] = []


class Serialised(BaseModel):
    amount: int

    @field_serializer("amount")
    def _fail(self, value: int) -> int:
        raise ValueError("no serialiser for this amount")


class Doubling(BaseModel):
    text: str

    @field_validator("text")
    @classmethod
    def _shout(cls, value: str) -> str:
        return value + "!"


class Picky(BaseModel):
    text: str

    @model_validator(mode="before")
    @classmethod
    def _needs_key(cls, data: Any) -> Any:
        return {"text": data["required_key"]}


def _cyclic() -> Chained:
    payload = Chained()
    payload.items.append(payload)
    return payload


VALUES = [
    ("inf", Measured, {"value": math.inf}, "float_not_json", ("value",)),
    ("nan", Measured, {"value": math.nan}, "float_not_json", ("value",)),
    # pydantic writes inf as null in an `Any` field: the worker would get None
    ("inf-in-any", Loose, {"extra": {"x": [1.0, -math.inf]}}, "float_not_json", ("extra", "x", 1)),
    ("bytes-not-utf8-in-any", Loose, {"extra": b"\xff\xfe"}, "serialization_error", ()),
    (
        "datetime-in-any",
        Loose,
        {"extra": datetime(2026, 1, 1, tzinfo=timezone.utc)},
        "does_not_travel",
        ("extra",),
    ),
    ("tuple-in-any", Loose, {"extra": (1, 2)}, "does_not_travel", ("extra",)),
    (
        "union-collapses",
        Either,
        {"when": datetime(2026, 1, 1, tzinfo=timezone.utc)},
        "does_not_travel",
        ("when",),
    ),
    ("serializer-raises", Serialised, {"amount": 5}, "serialization_error", ()),
    ("cycle", Chained, "cyclic", "serialization_error", ()),
    ("validator-not-idempotent", Doubling, {"text": "hi"}, "does_not_travel", ("text",)),
    ("validator-raises-keyerror", Picky, {"text": "x"}, "validator_error", ()),
]


@pytest.mark.parametrize(
    ("model", "payload", "kind", "loc"),
    [v[1:] for v in VALUES],
    ids=[v[0] for v in VALUES],
)
def test_a_value_that_cannot_travel_is_a_payload_error_with_a_failed_event(
    model: type[BaseModel], payload: Any, kind: str, loc: tuple[Any, ...]
) -> None:
    jobs = JobRegistry[Any]()
    ran: list[Any] = []
    job = jobs.define_job("types.value", payload=model, handle=lambda p, c: ran.append(p))
    events = RecordingInstrumentation()
    dispatcher = InlineDispatcher(context=None, instrumentation=events)
    payload = _cyclic() if payload == "cyclic" else payload
    with pytest.raises(JobPayloadError) as caught:
        dispatcher.dispatch_sync(job, payload)
    error = caught.value
    assert isinstance(error, JobsError) and error.job_name == "types.value"
    assert [(e["type"], tuple(e["loc"])) for e in error.errors] == [(kind, loc)], error.errors
    assert "types.value" in str(error)
    assert ran == []
    assert [(e.kind, e.phase) for e in events.for_job("types.value")] == [("failed", "schedule")]


def test_a_value_error_message_does_not_show_the_value() -> None:
    jobs = JobRegistry[Any]()
    job = jobs.define_job("types.quiet", payload=Loose, handle=lambda p, c: None)
    when = datetime(2031, 7, 9, 11, 13, 17, tzinfo=timezone.utc)
    with pytest.raises(JobPayloadError) as caught:
        InlineDispatcher(context=None).dispatch_sync(job, {"extra": {"card": when}})
    text = str(caught.value) + repr(caught.value.errors)
    assert "2031" not in text
    assert "datetime comes back as a str" in text


# -- a model validated just now, of types JSON carries exactly, decides as one that proves its trip


def _subclasses(line: type[BaseModel]) -> tuple[type[BaseModel], type[BaseModel]]:
    """The two subclasses of `line` that a payload may hold where its model says `line`: one
    with a field of its own (which the worker, building a `line`, would drop) and one with none
    (still another class at the worker)."""

    class SubLine(line):  # type: ignore[misc,valid-type]
        note: str = ""

    class SameLine(line):  # type: ignore[misc,valid-type]
        def shout(self) -> str:
            return str(self.sku).upper()

    return SubLine, SameLine


class Line(BaseModel):
    sku: str
    qty: int = Field(default=1, ge=1)


SubLine, SameLine = _subclasses(Line)


class Order(BaseModel):
    id: int
    kind: Literal["a", "b"] = "a"
    lines: list[Line] = []
    meta: dict[str, float] = {}
    parent: Line | None = None


class FreeLine(BaseModel):
    sku: str
    qty: int = 1


FreeSubLine, FreeSameLine = _subclasses(FreeLine)


class FreeOrder(BaseModel):
    """Order without constraints: nothing is validated back, the types alone decide."""

    id: int
    lines: list[FreeLine] = []
    meta: dict[str, float] = {}
    parent: FreeLine | None = None


def _shortcut_cases(order: Any, line: Any, sub: Any, same: Any) -> list[tuple[str, Any]]:
    def mutated(**changes: Any) -> Any:
        payload = order(id=1, lines=[line(sku="a")], parent=line(sku="p"))
        for name, value in changes.items():
            setattr(payload, name, value)
        return payload

    bad_line = line(sku="b")
    bad_line.qty = "many"  # a value of the wrong type, in an instance a mapping holds

    cases = [
        ("plain", order(id=1, lines=[line(sku="a")], meta={"x": 1.5}, parent=line(sku="p"))),
        ("plain-dict", {"id": 2, "lines": [{"sku": "a", "qty": 3}], "meta": {"y": -0.25}}),
        ("words-of-non-finite-floats", order(id=3, lines=[line(sku="null NaN Infinity")])),
        ("inf", order(id=1, meta={"x": math.inf})),
        ("nan-in-dict", {"id": 1, "meta": {"x": math.nan}}),
        ("subclass-nested", order(id=1, lines=[sub(sku="a", note="lost")])),
        ("subclass-in-dict", {"id": 1, "lines": [sub(sku="a", note="lost")]}),
        ("subclass-optional", mutated(parent=sub(sku="a", note="lost"))),
        ("subclass-without-fields", order(id=1, lines=[same(sku="a")])),
        ("subclass-without-fields-optional", mutated(parent=same(sku="p"))),
        ("wrong-type-nested-in-dict", {"id": 1, "lines": [bad_line]}),
        ("other-model-in-field", mutated(parent=order(id=9))),
        ("required-field-missing", order.model_construct(lines=[])),
        ("wrong-type-by-assignment", mutated(id="seven")),
        ("str-in-float-field", mutated(meta={"x": "1.5"})),
        ("int-key-in-str-keyed-dict", mutated(meta={1: 1.5})),
        ("tuple-for-list", mutated(lines=(line(sku="a"),))),
        ("bool-in-int", mutated(id=True)),
        ("big-int", order(id=2**60)),
    ]
    if order is Order:
        broken = mutated()
        broken.lines[0].qty = 0  # below ge=1, set after validation
        cases += [
            ("literal-broken", mutated(kind="z")),
            ("constraint-broken-nested", broken),
            ("constraint-broken-in-dict", {"id": 1, "lines": [broken.lines[0]]}),
        ]
    return [(f"{order.__name__}-{name}", order, payload) for name, payload in cases]


SHORTCUT_CASES = _shortcut_cases(Order, Line, SubLine, SameLine) + _shortcut_cases(
    FreeOrder, FreeLine, FreeSubLine, FreeSameLine
)


def _decision(make: Any) -> tuple[str, Any]:
    try:
        return "sent", make()
    except JobPayloadError as error:
        return "refused", [(e["type"], tuple(e["loc"])) for e in error.errors]


@pytest.mark.parametrize(
    ("model", "payload"), [c[1:] for c in SHORTCUT_CASES], ids=[c[0] for c in SHORTCUT_CASES]
)
def test_a_fresh_model_of_exact_types_decides_as_one_that_proves_its_trip(
    model: type[BaseModel], payload: Any
) -> None:
    """`encode_payload` skips the round trip only for a model this dispatch validated from a
    mapping whose types JSON carries exactly: every case decides as the proof decides, and
    whatever is sent is read back equal."""
    job = JobRegistry[Any]().define_job("types.plain", payload=model, handle=lambda p, c: None)
    try:
        validated = validate_payload(job, payload)
    except JobPayloadError:
        return  # refused before any serialisation, whichever the path
    fresh = validated is not payload
    decided = _decision(lambda: encode_payload(job, validated, fresh=fresh))
    assert decided == _decision(lambda: encode_payload(job, validated))
    if decided[0] == "sent":
        assert parse_payload(job, decided[1]) == validated


class Tidy(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(alias="name", max_length=5)
    tags: list[str] = []


class Shouting(BaseModel):
    """Plain fields, but an `__init__` of its own that validation calls."""

    text: str

    def __init__(self, **data: Any) -> None:
        super().__init__(**{**data, "text": str(data.get("text", "")).upper()})


MAPPING_CASES = [
    # (id, model, mapping, sent)
    ("plain", Order, {"id": 2, "lines": [{"sku": "a", "qty": 3}], "meta": {"y": -0.25}}, True),
    ("coerced", Order, {"id": "7", "meta": {"x": 1}, "parent": {"sku": "p"}}, True),
    ("extra-key-ignored", FreeOrder, {"id": 1, "unknown": [1, 2]}, True),
    ("bool-in-int", Order, {"id": True}, True),
    ("config-kept", Tidy, {"name": " ab ", "tags": ["x"]}, True),
    ("config-kept-extra-forbidden", Tidy, {"name": "ab", "other": 1}, False),
    ("constraint", Order, {"id": 1, "lines": [{"sku": "a", "qty": 0}]}, False),
    ("literal", Order, {"id": 1, "kind": "z"}, False),
    ("missing", Order, {"kind": "a"}, False),
    ("inf", Order, {"id": 1, "meta": {"x": math.inf}}, False),
    ("nan", FreeOrder, {"id": 1, "meta": {"x": math.nan}}, False),
    ("big-int", Order, {"id": 2**60}, False),
    ("big-int-nested", FreeOrder, {"id": 1, "lines": [{"sku": "a", "qty": -(2**53)}]}, False),
    ("model-inside", Order, {"id": 1, "lines": [Line(sku="a")]}, True),
    ("subclass-inside", FreeOrder, {"id": 1, "lines": [FreeSubLine(sku="a", note="x")]}, False),
    ("lone-surrogate", FreeOrder, {"id": 1, "lines": [{"sku": "\ud800"}]}, False),
    ("custom-init", Shouting, {"text": "quiet"}, True),
]


@pytest.mark.parametrize(
    ("model", "payload", "sent"), [c[1:] for c in MAPPING_CASES], ids=[c[0] for c in MAPPING_CASES]
)
def test_a_mapping_is_sent_as_json_the_worker_reads_back_equal_or_refused(
    model: type[BaseModel], payload: dict[str, Any], sent: bool
) -> None:
    job = JobRegistry[Any]().define_job("types.wire", payload=model, handle=lambda p, c: None)
    decided = _decision(lambda: prepare_dispatch(job, payload, 0).body)
    assert (decided[0] == "sent") == sent, decided
    if decided[0] == "sent":
        assert parse_payload(job, decided[1]) == validate_payload(job, payload)


def test_a_dispatch_shows_its_validated_payload() -> None:
    job = JobRegistry[Any]().define_job("types.lazy", payload=Order, handle=lambda p, c: None)
    prepared = prepare_dispatch(job, {"id": "3", "lines": [{"sku": "a"}]}, 1000)
    assert prepared.payload == Order(id=3, lines=[Line(sku="a")])
    dispatcher = RecordingDispatcher()
    dispatcher.dispatch_sync(job, {"id": "3", "lines": [{"sku": "a"}]})
    assert dispatcher.dispatched[0].payload == Order(id=3, lines=[Line(sku="a")])
    with pytest.raises(JobPayloadError) as refused:
        dispatcher.dispatch_sync(job, {"id": 1, "meta": {"x": math.inf}})
    assert [e["type"] for e in refused.value.errors] == ["float_not_json"]


def test_which_models_json_carries_exactly() -> None:
    """Only these skip the round trip when validated just now: no float, no validator or
    serialiser of their own, no alias that differs, no default that is not a valid value."""
    assert _carried_exactly(FreeLine) and _carried_exactly(Line) and _carried_exactly(Tidy)
    for model in (Order, FreeOrder, Shouting):  # floats; an __init__ of its own is fine
        assert _carried_exactly(model) is (model is Shouting), model
    for model in (Loose, Either, Chained, Serialised, Doubling, Picky, Strict, Aliased, B64):
        assert not _carried_exactly(model), model


class NoneDefault(BaseModel):
    text: str = None  # type: ignore[assignment]


class ConstrainedDefault(BaseModel):
    qty: int = Field(default=0, ge=1)


@pytest.mark.parametrize("model", [NoneDefault, ConstrainedDefault])
def test_a_default_that_is_not_a_valid_value_is_refused_at_dispatch(
    model: type[BaseModel],
) -> None:
    """pydantic does not validate defaults: the worker would refuse the value sent."""
    assert not _carried_exactly(model)
    job = JobRegistry[Any]().define_job("types.default", payload=model, handle=lambda p, c: None)
    with pytest.raises(JobPayloadError) as caught:
        InlineDispatcher(context=None).dispatch_sync(job, {})
    assert [e["type"] for e in caught.value.errors] == ["does_not_travel"]
