"""What the stand-in Inngest server records, for tests to inspect.

The harness hands out deep copies of these (taken under its lock), so a test can read them
freely while the executor keeps running.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from .protocol import DEFAULT_RETRIES

RunStatus = Literal["running", "completed", "failed"]
"""``running`` covers a run waiting for its event's ``ts`` or for a retry, too."""


@dataclasses.dataclass(frozen=True)
class EventRecord:
    """One event the Event API accepted (or the executor emitted, when ``internal``)."""

    name: str
    data: dict[str, Any]
    id: str
    """The sender's id, else the internal one: what functions see as ``event.id``."""
    internal_id: str
    """The id the Event API minted and answered with (from the request's id seed when there is
    one, else a fresh ULID): never the sender's."""
    ts: int
    """Unix milliseconds; the SDK fills in "now" when the caller left it 0."""
    received_at: float
    """Wall-clock seconds (time.time()) when the harness accepted it."""
    internal: bool = False
    """True for events the executor emitted itself (``inngest/function.failed``)."""
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The event object as handed to functions (name, data, id, ts and any extra keys sent)."""


@dataclasses.dataclass(frozen=True)
class EventApiRequest:
    """One HTTP request to ``POST /e/{key}``, whatever the answer was."""

    event_key: str
    status: int
    body: Any
    """The parsed JSON body sent (None if it was not JSON)."""
    response: dict[str, Any]
    headers: dict[str, str]
    received_at: float


@dataclasses.dataclass
class Attempt:
    """One HTTP call from the executor to the SDK's serve endpoint."""

    attempt: int
    """``ctx.attempt`` sent: 0-based, reset to 0 after each step that completes."""
    step_id: str
    """``stepId`` query parameter: ``step`` or the hashed id of a planned step."""
    started_at: float
    finished_at: float | None = None
    status_code: int | None = None
    """None when the call failed at the transport level (refused, timed out)."""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    """Response headers, lower-cased."""
    body: Any = None
    """Response body, parsed as JSON when it is JSON, else the text."""
    transport_error: str | None = None
    signature_valid: bool | None = None
    """In signed (production) mode: whether the SDK's response signature checked out."""
    request: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The JSON body sent, for tests that assert on the executor's request shape."""


@dataclasses.dataclass
class Run:
    """One function run, from the event that started it to its final status."""

    run_id: str
    function_id: str
    """Fully qualified id ``<app_id>-<fn_id>`` (``inngest.Function.id``)."""
    event: dict[str, Any]
    status: RunStatus = "running"
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    steps: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Memoised step results by hashed step id, as sent back in the request's ``steps``."""
    output: Any = None
    """Return value (the 200 body) of a completed run."""
    error: Any = None
    """Last error body of a failed run (the SDK sends ``{code, message, name, stack}``)."""
    created_at: float = 0.0
    finished_at: float | None = None
    failure_event_id: str | None = None
    """Id of the ``inngest/function.failed`` event this run's failure emitted, if any."""

    @property
    def attempt_numbers(self) -> list[int]:
        """``ctx.attempt`` of every call, in order (``[0, 1, 2]`` for two retries, no steps)."""
        return [a.attempt for a in self.attempts]

    @property
    def finished(self) -> bool:
        return self.status != "running"


@dataclasses.dataclass(frozen=True)
class RegisteredFunction:
    """A function config the SDK sent when the app synced."""

    id: str
    name: str
    app_name: str
    url: str
    """``steps.step.runtime.url``: the serve URL with ``?fnId=<id>&stepId=step``."""
    triggers: list[dict[str, Any]]
    retries_configured: int | None
    """``steps.step.retries.attempts`` as registered; None when the function set no retries."""
    raw: dict[str, Any]

    @property
    def retries(self) -> int:
        """Retries the executor grants: the registered number, else Inngest's default 4."""
        return DEFAULT_RETRIES if self.retries_configured is None else self.retries_configured


@dataclasses.dataclass(frozen=True)
class RegisteredApp:
    """One sync (registration) of an app."""

    app_name: str
    url: str
    sync_kind: Literal["out_of_band", "in_band"]
    function_ids: list[str]
    headers: dict[str, str]
    body: dict[str, Any]
