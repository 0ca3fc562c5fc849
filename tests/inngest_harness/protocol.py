"""Wire-level pieces of the Inngest protocol, as the Python SDK 0.5.19 reads and writes them.

Everything here mirrors code in the installed SDK (``inngest/_internal``); the module and line
each piece copies is named in its docstring, so a reader can check it after an SDK upgrade.
Nothing here talks to the network.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import hmac
import json
import math
import os
import re
import time
import urllib.parse
from typing import Any, Final

import jcs  # type: ignore[import-untyped]  # the SDK's own canonical-JSON dependency

# Header names (inngest/_internal/server_lib/consts.py, HeaderKey).
H_SIGNATURE: Final = "x-inngest-signature"
H_SERVER_KIND: Final = "x-inngest-server-kind"
H_EXPECTED_SERVER_KIND: Final = "x-inngest-expected-server-kind"
H_NO_RETRY: Final = "x-inngest-no-retry"
H_RETRY_AFTER: Final = "retry-after"
H_SYNC_KIND: Final = "x-inngest-sync-kind"
H_REQUEST_ID: Final = "x-request-id"
H_EVENT_ID_SEED: Final = "x-inngest-event-id-seed"
H_SDK_HANDLED: Final = "x-inngest-sdk-handled"

# Query parameters the SDK's serve endpoint reads (QueryParamKey).
Q_FN_ID: Final = "fnId"
Q_STEP_ID: Final = "stepId"
UNSPECIFIED_STEP_ID: Final = "step"
"""``stepId=step`` means "no step targeted": the SDK runs the handler from the top."""

FUNCTION_FAILED_EVENT: Final = "inngest/function.failed"
"""The system event the SDK's ``on_failure`` function (``{fn_id}-failure``) is triggered by."""

DEFAULT_RETRIES: Final = 4
"""What Inngest uses when a function registers no ``retries`` (the SDK then omits the field)."""

_SIGNING_KEY_PREFIX = re.compile(r"^signkey-[\w]+-")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def strip_signing_key_prefix(signing_key: str) -> str:
    """``signkey-test-abcd`` -> ``abcd`` (transforms.remove_signing_key_prefix)."""
    match = _SIGNING_KEY_PREFIX.match(signing_key)
    return signing_key[match.end() :] if match else signing_key


def hash_signing_key(signing_key: str) -> str:
    """The bearer token the SDK sends to the Inngest API (transforms.hash_signing_key).

    It is sha256 over the key's *hex-decoded* bytes, so a signing key must be
    ``signkey-<env>-<hex>``: a non-hex key makes the SDK raise ``ValueError`` while syncing.
    """
    return hashlib.sha256(bytes.fromhex(strip_signing_key_prefix(signing_key))).hexdigest()


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes, which is what both request signing and verification hash."""
    out: bytes = jcs.canonicalize(value)
    return out


def sign_body(body: bytes, signing_key: str, *, timestamp: int | None = None) -> str:
    """Make an ``X-Inngest-Signature`` value for a request body, as the Inngest server does.

    Same algorithm as ``inngest._internal.net.sign_request``: HMAC-SHA256 keyed by the signing
    key without its ``signkey-*-`` prefix, over the JCS-canonical body followed by the decimal
    Unix timestamp in **seconds**; the value is ``t=<seconds>&s=<hex>``. An empty body is
    hashed as empty. The SDK does not check the timestamp's age.
    """
    t = int(time.time()) if timestamp is None else timestamp
    canonical = canonical_json(json.loads(body)) if body else b""
    mac = hmac.new(strip_signing_key_prefix(signing_key).encode(), canonical, hashlib.sha256)
    mac.update(str(t).encode())
    return f"t={t}&s={mac.hexdigest()}"


def verify_response_signature(body: bytes, header: str | None, signing_key: str) -> bool:
    """Check the signature the SDK puts on its answer to a signed request.

    The SDK signs the *raw* response bytes (not canonicalised) plus the timestamp
    (net.sign_response); it only signs when the request carried a valid signature.
    """
    if not header:
        return False
    parsed = urllib.parse.parse_qs(header)
    if "s" not in parsed:
        return False
    mac = hmac.new(strip_signing_key_prefix(signing_key).encode(), body, hashlib.sha256)
    if "t" in parsed:
        mac.update(parsed["t"][0].encode())
    return hmac.compare_digest(parsed["s"][0], mac.hexdigest())


def new_ulid(ms: int | None = None, entropy: bytes | None = None) -> str:
    """A ULID (26 Crockford base-32 chars), the id format Inngest gives events and runs."""
    millis = int(time.time() * 1000) if ms is None else ms
    rand = os.urandom(10) if entropy is None else entropy[:10].ljust(10, b"\0")
    value = ((millis & (2**48 - 1)) << 80) | int.from_bytes(rand, "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def seeded_event_id(seed: str | None, index: int) -> str | None:
    """The internal id Inngest derives for the ``index``-th event of a request.

    The SDK sends ``x-inngest-event-id-seed: <unix ms>,<base64 entropy>`` (client._seed) and
    resends the *same* request on a 5xx, so an id-less event, whose ``id`` is its internal
    one, runs once however often it is resent. Returns None when the seed is absent or
    malformed.
    """
    if not seed or "," not in seed:
        return None
    millis_s, entropy_b64 = seed.split(",", 1)
    try:
        millis = int(millis_s)
        entropy = base64.b64decode(entropy_b64, validate=True)
    except ValueError:
        return None
    derived = hashlib.sha256(entropy + index.to_bytes(4, "big")).digest()
    return new_ulid(millis, derived)


MIN_RETRY_WAIT: Final = 1.0
MAX_RETRY_WAIT: Final = 24 * 3600.0
"""Inngest's bounds on a retry's wait (pkg/consts: MinRetryDuration, MaxRetryDuration)."""

MAX_EVENT_NAME: Final = 255
_TS_RANGE: Final = (
    datetime.datetime(1980, 1, 1, tzinfo=datetime.timezone.utc).timestamp() * 1000,
    datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc).timestamp() * 1000,
)


def event_problem(item: Any, max_bytes: int) -> str | None:
    """Why Inngest's Event API refuses this one event (pkg/event: Validate, IsInternal, the
    name and size limits), or None when it takes it."""
    if not isinstance(item, dict):
        return "event is not an object"
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return "event name is empty"
    if name.lower().startswith("inngest/"):
        return f"event name is reserved for internal use: {name}"
    if len(name) > MAX_EVENT_NAME:
        return f"event name is longer than {MAX_EVENT_NAME} characters"
    if item.get("data") is not None and not isinstance(item["data"], dict):
        return "event data is not an object"
    if item.get("id") is not None and not isinstance(item["id"], str):
        return "event id is not a string"
    ts = item.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        return "event ts is not an integer (Unix ms)"
    if ts and not _TS_RANGE[0] <= ts <= _TS_RANGE[1]:
        return "timestamp is before Jan 1, 1980 or after Jan 1, 2100"
    size = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        return f"event is {size} bytes; the limit is {max_bytes}"
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Wall-clock time (epoch seconds) of the next try for a ``retry-after`` header, read as
    Inngest reads it (pkg/execution/driver/httpdriver/parse.go, ParseRetry).

    The SDK sends an ISO-8601 UTC time with millisecond precision, truncated (not rounded):
    ``2024-01-01T00:00:00.123Z`` (transforms.to_iso_utc); HTTP's integer seconds and HTTP-date
    forms are accepted too. Like Inngest, a time less than 1 s away becomes the next whole
    second plus one (which can be sooner than asked) and one more than 24 h away is cut to
    24 h. Returns None when absent or unparseable.
    """
    at = parse_wall_time(value, time.time() if now is None else now)
    if at is None:
        return None
    current = time.time() if now is None else now
    whole = math.floor(current)
    if at - current < MIN_RETRY_WAIT:
        return whole + MIN_RETRY_WAIT
    if at - current > MAX_RETRY_WAIT:
        return whole + MAX_RETRY_WAIT
    return at


def parse_wall_time(value: str | None, current: float) -> float | None:
    """Epoch seconds of an ISO time, an HTTP date, or a number of seconds from ``current``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit() and len(value) <= 7:
        return math.floor(current) + int(value)
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


_CLAUSE = re.compile(
    r"""^\s*event\.(?P<path>[A-Za-z_][\w.]*)\s*(?P<op>==|!=)\s*
    (?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<lit>-?\d+(?:\.\d+)?|true|false|null))\s*$""",
    re.VERBOSE,
)


class UnsupportedExpression(ValueError):
    """A trigger expression outside the tiny subset the harness evaluates."""


def expression_matches(expression: str | None, event: dict[str, Any]) -> bool:
    """Evaluate a trigger ``expression`` (CEL in Inngest) against an event.

    Only ``event.<path> == / != <literal>`` clauses joined by ``&&`` are understood: enough for
    the SDK's on_failure trigger ``event.data.function_id == '<app>-<fn>'``. Anything else
    raises UnsupportedExpression so a test never passes by accident.
    """
    if expression is None or expression.strip() == "":
        return True
    for clause in expression.split("&&"):
        match = _CLAUSE.match(clause)
        if match is None:
            raise UnsupportedExpression(expression)
        expected: Any
        if match["sq"] is not None:
            expected = match["sq"]
        elif match["dq"] is not None:
            expected = match["dq"]
        else:
            expected = json.loads(match["lit"])
        actual: Any = event
        for part in match["path"].split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        if (actual == expected) != (match["op"] == "=="):
            return False
    return True


def event_name_matches(pattern: str, name: str) -> bool:
    """Trigger event match: exact, or a trailing ``*`` wildcard (``app/*``) as Inngest allows."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return pattern == name


_WAIT_CLAUSE = re.compile(
    r"^\s*(?P<left>(?:event|async)\.[A-Za-z_][\w.]*)\s*==\s*"
    r"(?P<right>(?:event|async)\.[A-Za-z_][\w.]*)\s*$"
)


def wait_matches(
    expression: str | None, run_event: dict[str, Any], incoming: dict[str, Any]
) -> bool:
    """Evaluate a ``step.wait_for_event`` ``if`` expression (CEL in Inngest): ``event`` is the
    run's triggering event, ``async`` the incoming one. Only ``<path> == <path>`` clauses
    joined by ``&&`` are understood (what jobs_core's ``match=`` makes); anything else raises
    UnsupportedExpression."""
    if expression is None or expression.strip() == "":
        return True
    roots = {"event": run_event, "async": incoming}

    def value(path: str) -> Any:
        root, *parts = path.split(".")
        found: Any = roots[root]
        for part in parts:
            found = found.get(part) if isinstance(found, dict) else None
        return found

    for clause in expression.split("&&"):
        match = _WAIT_CLAUSE.match(clause)
        if match is None:
            raise UnsupportedExpression(expression)
        if value(match["left"]) != value(match["right"]):
            return False
    return True
