"""The speed-only constructs issue 27 took out of the core, rebuilt here so that
`benchmarks/constructs.py` can time each one against what replaced it, in one process.

Each is the code of commit c34660b (`git show c34660b:jobs_core/<file>`), cut to the path a
dispatch or a job takes (warnings and the cases a benchmark never reaches left out), over the
current types where the old code used the old ones. jobs_core never imports this module.

- `new_dispatch_id`: `jobs_core/ids.py`, a random prefix per process and a counter;
- `new_receipt`: `jobs_core/port.py`, a frozen receipt made by setting its slots;
- `MutablePreparedJob`, `MutableDelivery`: `jobs_core/dispatcher.py` and `jobs_core/worker.py`,
  the dataclasses left unfrozen because a frozen one took longer to make;
- `completed`: `jobs_core/execution.py`, the outcome of a run that went well made once per
  attempt number (`_COMPLETED`);
- `encode_mapping`: `jobs_core/exact.py` and `jobs_core/payload.py`, a mapping validated
  straight into the model's JSON-ready data and serialised, never built into a model;
- `LockFreeMemoryStore`: `jobs_core/idempotency.py`, the in-process key store whose claim is
  one `dict.setdefault` without a lock.

(Dramatiq's `EncodedMessage` was removed too, and put back in `backends/dramatiq/dispatcher.py`
when a quiet run showed it moves a 10 KB and a 200 KB dispatch by more than their spread.)
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydantic_core
from pydantic import BaseModel
from pydantic_core import SchemaValidator

from jobs_core.dispatch.port import DispatchReceipt
from jobs_core.jobs.job import Job
from jobs_core.jobs.payload import DEFAULT_MAX_PAYLOAD_BYTES, _carried_exactly
from jobs_core.worker.worker import Outcome

# -- jobs_core/ids.py ----------------------------------------------------------------------

_prefix = ""
_counter = itertools.count()


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(10).hex()
    _counter = itertools.count()


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_dispatch_id() -> str:
    """32 hex digits: 20 drawn when the process starts (and in every forked child), then a
    counter (removed: now `secrets.token_hex(16)`)."""
    return f"{_prefix}{next(_counter):012x}"


# -- jobs_core/port.py: new_receipt ----------------------------------------------------------

_new_object = object.__new__
_set_job_name, _set_dispatch_id, _set_backend, _set_deduplicated = (
    getattr(DispatchReceipt, name).__set__
    for name in ("job_name", "dispatch_id", "backend", "deduplicated")
)


def new_receipt(
    job_name: str, dispatch_id: str, backend: str, deduplicated: bool = False
) -> DispatchReceipt:
    """`DispatchReceipt(...)` with each slot set directly instead of through the frozen
    dataclass's `object.__setattr__` (removed: now `DispatchReceipt(...)`)."""
    receipt: DispatchReceipt = _new_object(DispatchReceipt)
    _set_job_name(receipt, job_name)
    _set_dispatch_id(receipt, dispatch_id)
    _set_backend(receipt, backend)
    _set_deduplicated(receipt, deduplicated)
    return receipt


# -- jobs_core/dispatcher.py, jobs_core/worker.py: unfrozen dataclasses ----------------------


@dataclass(slots=True)
class MutablePreparedJob:
    """The old `PreparedJob` (not frozen; `_data` parsed on first use)."""

    job: Job[Any, Any]
    model: BaseModel | None
    body: bytes
    dispatch_id: str
    eta: datetime | None = None
    idempotency_key: str | None = None
    _data: Any = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class MutableDelivery:
    """The old `Delivery` (not frozen)."""

    job_name: str
    data: Any
    attempt: int = 0
    dispatch_id: str | None = None


# -- jobs_core/execution.py: _COMPLETED --------------------------------------------------------

_COMPLETED = tuple(Outcome("completed", attempt) for attempt in range(32))


def completed(attempt: int) -> Outcome:
    """The outcome of a run that went well, made once per attempt number (removed: now
    `Outcome("completed", attempt)`)."""
    if 0 <= attempt < len(_COMPLETED):
        return _COMPLETED[attempt]
    return Outcome("completed", attempt)


# -- jobs_core/exact.py, jobs_core/payload.py: a mapping straight into JSON --------------------

MAX_SAFE_INTEGER = 2**53 - 1
_NOT_SCHEMAS = frozenset({"metadata", "config", "default", "serialization", "expected", "cls"})
_WIRE: weakref.WeakKeyDictionary[type[BaseModel], SchemaValidator | None] = (
    weakref.WeakKeyDictionary()
)


class _NotPlain(Exception):
    pass


def wire_validator(model: type[BaseModel]) -> SchemaValidator | None:
    """The model's own validator turned to give its JSON-ready data (a dict where the model
    gives an instance), refusing inf, NaN and integers beyond ±(2**53 - 1); None for a model
    that is not plain. Cached per class. (The old code judged plainness with its own `Plan`;
    this uses the current `_carried_exactly`, which vouches for the same kind of model.)"""
    try:
        return _WIRE[model]
    except KeyError:
        pass
    validator = None
    schema = model.__pydantic_core_schema__
    top = schema["schema"] if schema["type"] == "definitions" else schema
    if _carried_exactly(model) and top["type"] == "model" and top["cls"] is model:
        try:
            validator = SchemaValidator(_as_data(schema))  # type: ignore[arg-type]
        except Exception:
            pass
    _WIRE[model] = validator
    return validator


def encode_mapping(
    job: Job[Any, Any], payload: Any, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> bytes | None:
    """The JSON a dispatch sends for mapping `payload`, validated straight into JSON-ready data
    (no model built); None where this path does not apply (the model path then runs)."""
    validator = wire_validator(job.payload_model)
    if validator is None:
        return None
    try:
        raw: bytes = pydantic_core.to_json(validator.validate_python(payload))
    except Exception:
        return None
    return raw if not max_bytes or len(raw) <= max_bytes else None


def _as_data(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_as_data(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    if kind == "model":
        return _typed_dict(schema)
    if isinstance(kind, str) and kind.startswith("function"):
        raise _NotPlain
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
        raise _NotPlain
    return out


def _typed_dict(schema: dict[str, Any]) -> dict[str, Any]:
    fields = schema["schema"]
    if (
        schema.get("root_model")
        or schema.get("post_init")
        or schema.get("custom_init")
        or fields["type"] != "model-fields"
    ):
        raise _NotPlain
    typed: dict[str, Any] = {
        "type": "typed-dict",
        "fields": {
            name: {
                **{k: v for k, v in f.items() if k not in ("type", "frozen", "schema")},
                "type": "typed-dict-field",
                "schema": _as_data(f["schema"]),
                "required": f["schema"]["type"] != "default",
            }
            for name, f in fields["fields"].items()
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


# -- jobs_core/idempotency.py: the lock-free in-process store ----------------------------------

Entry = tuple[str, float, str]
"""A claim: (dispatch id, expiry on the monotonic clock, key)."""
STALE_LIMIT = 4


class LockFreeMemoryStore:
    """The old in-process store: a claim is one `dict.setdefault` (atomic under the GIL), the
    lock taken only to drop expired keys, to trim a full store (a 64th of its cap at once) and
    to release keys (removed: now an `OrderedDict` under a lock)."""

    def __init__(self, ttl_seconds: float = 24 * 3600, max_keys: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_keys = max_keys
        self.evicted = 0
        self._keys: dict[str, Entry] = {}
        self._order: deque[Entry] = deque()
        self._next_expiry = math.inf
        self._lock = threading.Lock()
        self._order_limit = STALE_LIMIT * max_keys

    def claim(self, claims: Sequence[tuple[str, str]]) -> list[str | None]:
        now = time.monotonic()
        if now >= self._next_expiry:
            self._expire(now)
        expires = now + self.ttl_seconds
        keys, order = self._keys, self._order
        results: list[str | None] = []
        for key, dispatch_id in claims:
            entry = (dispatch_id, expires, key)
            held = keys.setdefault(key, entry)
            if held is not entry and held[1] <= now:
                held = self._claim_expired(entry, now)
            if held is entry:
                order.append(entry)
                results.append(None)
            else:
                results.append(held[0])
        if len(keys) > self.max_keys or len(order) > self._order_limit:
            self._trim()
        if expires < self._next_expiry:
            self._next_expiry = expires
        return results

    def release(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)

    def _claim_expired(self, entry: Entry, now: float) -> Entry:
        keys, key = self._keys, entry[2]
        with self._lock:
            held = keys.get(key)
            if held is None or held[1] <= now:
                keys[key] = entry
                return entry
            return held

    def _expire(self, now: float) -> None:
        with self._lock:
            keys, order = self._keys, self._order
            while order:
                entry = order[0]
                if entry[1] > now:
                    self._next_expiry = entry[1]
                    return
                order.popleft()
                if keys.get(entry[2]) is entry:
                    del keys[entry[2]]
            self._next_expiry = math.inf

    def _trim(self) -> None:
        keys, order = self._keys, self._order
        keep = self.max_keys - self.max_keys // 64
        forgotten: list[str] = []
        with self._lock:
            while order and len(keys) > keep:
                entry = order.popleft()
                if keys.get(entry[2]) is entry:
                    del keys[entry[2]]
                    forgotten.append(entry[2])
            if len(order) > self._order_limit:
                for _ in range(len(order)):
                    entry = order.popleft()
                    if keys.get(entry[2]) is entry:
                        order.append(entry)
            self.evicted += len(forgotten)
