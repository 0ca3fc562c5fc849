"""Payload handling: validate at dispatch, serialise to JSON, parse again at the worker.

A payload crosses the wire as the JSON of `model.model_dump(mode="json", round_trip=True)`,
serialised once per dispatch (`encode_payload`), and the worker's `Model.model_validate(...)`
must give back a model equal to the one dispatched (C10): a model with a field that cannot make
that trip is refused when its job is defined (`check_travels`), and a value that cannot is
refused at dispatch (`encode_payload`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import pydantic_core
from pydantic import BaseModel, ValidationError

from .errors import JobPayloadError
from .exact import MAX_SAFE_INTEGER, wire_validator
from .travel import find_values, payload_json, plain_errors


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


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 16
"""Sixteen digits in a row, once every digit reads 0: the JSON may hold an integer beyond
MAX_SAFE_INTEGER (which has 16 digits). A translation and a substring search are ten times
quicker than the regular expression `\\d{16}`; only then is the payload walked."""


def _shape_error(job_name: str, got: Any, expected: str) -> JobPayloadError:
    kind = type(got).__name__
    return JobPayloadError(
        job_name,
        [
            {
                "type": "model_type",
                "loc": (),
                "msg": f"expected {expected}, got {kind}",
                "input": kind,
            }
        ],
    )


def validate_payload(job: Job, payload: Any) -> BaseModel:
    """Return `payload` as an instance of the job's model, or raise `JobPayloadError` (C4, C5)."""
    model: type[BaseModel] = job.payload_model
    if type(payload) is not dict and isinstance(payload, model):
        return payload
    if type(payload) is dict or (
        isinstance(payload, Mapping) and not isinstance(payload, BaseModel)
    ):
        try:
            validated: BaseModel = model.__pydantic_validator__.validate_python(payload)
            return validated
        except ValidationError as exc:
            raise JobPayloadError(job.name, plain_errors(exc)) from None
        except Exception as exc:  # a validator raising what pydantic does not wrap
            reason = f"validating raised {type(exc).__name__}: {str(exc)[:200]}"
            error = {"type": "validator_error", "loc": (), "msg": reason}
            raise JobPayloadError(job.name, [error]) from exc
    raise _shape_error(
        job.name, payload, f"an instance of {model.__name__} or a mapping of its fields"
    )


def _unsafe_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER


def _unsafe_integers(value: Any) -> Iterator[dict[str, Any]]:
    for loc, number in find_values(value, _unsafe_integer):
        yield {
            "type": "int_unsafe",
            "loc": loc,
            "msg": f"integer {number} is beyond ±(2**53 - 1), which not every backend carries "
            "exactly (Inngest rounds it): send it as a string",
            "input": number,
        }


def encode_payload(
    job: Job, model: BaseModel, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, *, fresh: bool = False
) -> bytes:
    """The JSON a dispatch sends: the one serialisation of a validated payload.

    Refuses one over `max_bytes` (no truncation), and one holding an integer beyond
    ±(2**53 - 1), naming the field: a job that dispatches on one backend dispatches on all (C10).
    `fresh`: `model` was validated from a mapping by this dispatch (see `payload_json`).
    """
    raw = payload_json(job, model, fresh)
    if _LONG_NUMBER in raw.translate(_DIGITS_AS_ZERO):
        unsafe = list(_unsafe_integers(model.model_dump(mode="json", round_trip=True)))
        if unsafe:
            raise JobPayloadError(job.name, unsafe)
    if max_bytes and len(raw) > max_bytes:
        size = len(raw)
        raise JobPayloadError(
            job.name,
            [
                {
                    "type": "payload_too_large",
                    "loc": (),
                    "msg": f"payload is {size} bytes as JSON; the limit is {max_bytes} bytes "
                    "(JOBS_MAX_PAYLOAD_BYTES): store large data elsewhere and send a reference",
                    "input": size,
                }
            ],
        )
    return raw


def encode_mapping(
    job: Job, payload: Any, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> bytes | None:
    """`encode_payload(job, validate_payload(job, payload))` for a mapping, where the job's model
    is plain, at a third of the cost: validated straight into JSON-ready data, never into a
    model (`jobs_core.exact.wire_validator`). None where this path does not apply or refuses
    the payload: the model path then does the work, and says why."""
    validator = wire_validator(job.payload_model)
    if validator is None:
        return None
    try:
        raw: bytes = pydantic_core.to_json(validator.validate_python(payload))
    except Exception:  # invalid, or what only the model path can judge: it gives the error
        return None
    return raw if not max_bytes or len(raw) <= max_bytes else None


def to_wire(job: Job, model: BaseModel, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Any:
    """The JSON-ready form (dicts, lists, str, numbers) of what `encode_payload` sends."""
    return pydantic_core.from_json(encode_payload(job, model, max_bytes))


def parse_payload(job: Job, raw: Any) -> BaseModel:
    """Worker side: turn what the backend delivered (dict, JSON text or bytes) into the model.

    Any failure, whatever its cause (bad JSON, wrong shape, schema drift), is a `JobPayloadError`
    so that the worker gives up on the message instead of retrying it (C16).
    """
    model: type[BaseModel] = job.payload_model
    try:
        if type(raw) is dict:  # what most backends deliver: no ABC check, no wrapper
            parsed: BaseModel = model.__pydantic_validator__.validate_python(
                raw, by_alias=True, by_name=True
            )
            return parsed
        if isinstance(raw, (str, bytes, bytearray)):
            return model.model_validate_json(raw, by_alias=True, by_name=True)
        if isinstance(raw, Mapping):
            return model.model_validate(raw, by_alias=True, by_name=True)
    except ValidationError as exc:
        raise JobPayloadError(job.name, plain_errors(exc)) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise JobPayloadError(
            job.name, [{"type": "invalid_payload", "loc": (), "msg": str(exc)[:200]}]
        ) from None
    raise _shape_error(job.name, raw, "a JSON object")
