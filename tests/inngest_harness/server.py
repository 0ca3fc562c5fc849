"""A small stand-in for the Inngest server (Event API + registration + executor), for tests only.

The real Inngest Dev Server cannot be installed on these machines, so tests drive the SDK's
real serve endpoint the way Inngest does, over loopback HTTP:

* **Event API** ``POST /e/{event_key}``: takes the JSON array (or single object) that
  ``client.send_sync`` posts and, like Inngest's, handles its events one by one: each accepted
  event gets an internal id it mints itself (a ULID, from the SDK's id seed when there is one),
  and the answer ``{"ids": [...], "status": 200}`` carries those, never the sender's ``id``.
  The first event Inngest would refuse (no name, an ``inngest/`` name, a name over 255
  characters, ``ts`` outside 1980-2100, data not an object, an event over ``max_event_bytes``)
  stops the request: 400 with the ids of the events already accepted, which run. With
  ``rate_limit=(n, seconds)`` a key sending more requests than that in a sliding window gets
  429 with a whole-second ``Retry-After`` (Inngest Cloud: 75 per 5 s). An event's ``id`` (the
  sender's, else the internal one) runs each function once for 24 h; the repeat is stored all
  the same. ``ts`` (Unix ms) means "run no earlier than". Everything is recorded.
* **Registration** ``POST /fn/register``: where the SDK's ``PUT`` handler sends the app's
  function configs (out-of-band sync, dev and cloud mode). In-band sync (cloud mode) is driven
  by :meth:`InngestHarness.register_app` with ``in_band=True``.
* **Executor**: for each accepted event, every registered function whose trigger matches gets a
  run; the run calls the function's registered URL (``?fnId=<app>-<fn>&stepId=step``) with the
  executor's request body, signed in cloud mode, and follows the answers: 200 done, 206 steps
  (memoised, then called again), 500 retried up to ``retries`` (``x-inngest-no-retry`` stops,
  ``retry-after`` delays as Inngest reads it: a wait under 1 s becomes the next whole second
  plus one, one over 24 h is cut to 24 h), a function the app no longer serves retried like any
  500, and on final failure, whatever its cause (an error, a refused or dropped call), emits
  ``inngest/function.failed`` so the SDK's ``on_failure`` function (``{fn_id}-failure``) runs.
  A call refused, cut or timed out is a failed attempt, retried after ``retry_wait`` (a
  backoff when ``retry_backoff`` > 1), as Inngest retries it.
* **Restart**: :meth:`InngestHarness.pause` takes the server down with its state kept (the
  port closed, no call made), :meth:`InngestHarness.resume` brings it back on the same port.

Deliberate simplifications (a real Inngest server differs): a run's planned (parallel) steps
are called side by side, but pass the flow gate without taking a turn; ``WaitForEvent``/``InvokeFunction``/AI ops
fail the run; cron triggers never fire (use :meth:`InngestHarness.start_run`); function
``concurrency`` and ``throttle`` are modelled (see ``flow.py``), but no debounce/batching/
idempotency expression/cancel; trigger expressions are limited to
``event.<path> ==/!= <literal>`` joined by ``&&``. Waits use conditions, never sleeps.
"""

from __future__ import annotations

import copy
import dataclasses
import http.server
import json
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import httpx

from .executor import Executor, parse_body
from .protocol import (
    FUNCTION_FAILED_EVENT,
    H_EVENT_ID_SEED,
    H_RETRY_AFTER,
    H_SERVER_KIND,
    H_SIGNATURE,
    H_SYNC_KIND,
    UNSPECIFIED_STEP_ID,
    UnsupportedExpression,
    canonical_json,
    event_name_matches,
    event_problem,
    expression_matches,
    hash_signing_key,
    new_ulid,
    seeded_event_id,
    sign_body,
    verify_response_signature,
)
from .records import (
    EventApiRequest,
    EventRecord,
    RegisteredApp,
    RegisteredFunction,
    Run,
)

ServerKind = Literal["dev", "cloud"]
T = TypeVar("T")
R = TypeVar("R")


class HarnessError(RuntimeError):
    """The SDK or the test did something the stand-in server cannot go on with."""


def _at_least(
    predicate_or_count: int | Callable[[Sequence[R]], bool], counted: Callable[[Sequence[R]], int]
) -> Callable[[Sequence[R]], bool]:
    """What a `wait_for_*` waits for: the predicate given, or, for a count `n`, that
    `counted(records)` (how many of the records count) is `n` or more."""
    if not isinstance(predicate_or_count, int):
        return predicate_or_count
    count = predicate_or_count
    return lambda records: counted(records) >= count


@dataclasses.dataclass
class _ForcedAnswer:
    status: int
    body: dict[str, Any] | str
    remaining: int | None
    accept: bool


class InngestHarness:
    """Loopback stand-in for the Inngest server: Event API, app registration and executor.

    Use as a context manager; everything it starts (HTTP server thread, executor scheduler
    thread, call pool) stops on exit. Give the SDK client :attr:`event_api_url` and
    :attr:`api_url` (``inngest.Inngest(event_api_base_url=..., api_base_url=...)``, or
    :meth:`client_kwargs`), serve the functions (see ``serve_functions``), then call
    :meth:`register_app` with the serve URL.

    Mode: with ``signing_key`` the harness acts as Inngest Cloud (``x-inngest-server-kind:
    cloud``, every call signed, registration must carry the signing key's bearer hash);
    without, as the Dev Server (``dev``, nothing signed).
    """

    def __init__(
        self,
        *,
        signing_key: str | None = None,
        event_key: str | None = None,
        retry_delay: float = 0.01,
        retry_backoff: float = 1.0,
        max_retry_delay: float | None = None,
        call_timeout: float = 30.0,
        dedup_window: float = 24 * 3600.0,
        workers: int = 8,
        host: str = "127.0.0.1",
        rate_limit: tuple[int, float] | None = None,
        max_event_bytes: int = 256 * 1024,
        app_transport: httpx.BaseTransport | None = None,
    ) -> None:
        """
        Args:
            signing_key: ``signkey-<env>-<hex>``; set = cloud mode (signed calls), None = dev.
            event_key: when set, ``POST /e/{key}`` with another key gets 401; None = any key.
            retry_delay: seconds before retrying an ordinary error (no ``retry-after``): an
                error answer, or a call refused, cut or timed out.
            retry_backoff: each such retry of a run waits this many times longer than the one
                before (Inngest: 15 s, 30 s, 1 min, 2 min...; 1.0 = always ``retry_delay``).
            max_retry_delay: the longest such wait (None = no limit).
            call_timeout: seconds for one executor call to the SDK.
            dedup_window: seconds an event id runs a function once (Inngest: 24 h).
            workers: executor calls in flight at once (one per run at a time).
            host: loopback address to bind.
            rate_limit: ``(requests, seconds)`` per event key, then 429 (Cloud: ``(75, 5.0)``);
                None = no limit.
            max_event_bytes: largest event (as JSON, envelope included) accepted (Free: 256 KiB).
            app_transport: how the harness reaches the served app (sync, inspection and every
                executor call): None = over the network to its URL; an httpx transport (e.g.
                ``asgi_transport(app)``) = through it, the app called in process. The SDK's own
                requests to the harness (registration, events) go over loopback either way.
        """
        if signing_key is not None:
            try:
                hash_signing_key(signing_key)
            except ValueError:
                raise ValueError(
                    "signing_key must be 'signkey-<env>-<hex>': the SDK hex-decodes it"
                ) from None
        self.signing_key = signing_key
        self.event_key = event_key
        self.retry_delay = retry_delay
        """Seconds before retrying an ordinary error; may be changed mid-test."""
        self.retry_backoff = retry_backoff
        self.max_retry_delay = max_retry_delay
        self.call_timeout = call_timeout
        self.dedup_window = dedup_window
        self.rate_limit = rate_limit
        """``(requests, seconds)`` per event key; may be changed mid-test."""
        self.max_event_bytes = max_event_bytes
        self.signature_offset: float = 0.0
        """Seconds added to the timestamp of executor signatures (stale-signature tests)."""
        self._host = host
        self._workers = workers
        self._app_transport = app_transport

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # any record changed (test waits)
        self._events: list[EventRecord] = []
        self._requests: list[EventApiRequest] = []
        self._seen_ids: dict[tuple[str, str], float] = {}
        self._recent: dict[str, list[float]] = {}
        self._functions: dict[str, RegisteredFunction] = {}
        self._apps: list[RegisteredApp] = []
        self._errors: list[str] = []
        self._forced: _ForcedAnswer | None = None
        self._stopping = False
        self._httpd: _HarnessHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._port: int | None = None
        self._executor: Executor | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> InngestHarness:
        """Bind a free loopback port and start the HTTP server and the executor."""
        if self._httpd is not None:
            return self
        if self._executor is not None and not self._stopping:
            raise HarnessError("the harness is paused: resume() it")
        self._stopping = False
        self._executor = Executor(
            settings=self,
            lock=self._lock,
            changed=self._changed,
            on_failed=self._on_run_failed,
            call_timeout=self.call_timeout,
            workers=self._workers,
            transport=self._app_transport,
        )
        self._executor.functions = self._functions.get  # InvokeFunction starts one by its id
        self._serve_http(0)
        return self

    def _serve_http(self, port: int) -> None:
        self._httpd = _HarnessHTTPServer((self._host, port), _Handler, self)
        self._port = int(self._httpd.server_address[1])
        self._http_thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="inngest-harness-http",
            daemon=True,
        )
        self._http_thread.start()

    def _close_http(self, timeout: float) -> bool:
        """Stop serving and close the port; True when the HTTP thread ended."""
        stopped = True
        if self._httpd is not None and self._http_thread is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._http_thread.join(timeout)
            stopped = not self._http_thread.is_alive()
        self._httpd = None
        self._http_thread = None
        return stopped

    def pause(self, timeout: float = 10.0) -> None:
        """Go down as a durable Inngest server does for a restart, keeping its state.

        The executor makes no new call (calls already made finish first, as in a graceful
        shutdown; a server that died would make them again after its restart), and the HTTP
        port closes: the Event API and registration refuse connections. Events, runs, pending
        retries and registered functions stay in memory; :meth:`resume` brings it back.
        """
        executor = self._require_executor()
        if self._httpd is None:
            raise HarnessError("the harness is already paused")
        stopped = executor.pause(timeout)
        stopped = self._close_http(timeout) and stopped
        if not stopped:
            raise HarnessError(f"the harness did not pause within {timeout}s")

    def resume(self) -> None:
        """Up again on the same port after :meth:`pause`; calls that fell due meanwhile (retries,
        future ``ts``) are made now."""
        executor = self._require_executor()
        if self._httpd is not None:
            raise HarnessError("the harness is not paused")
        assert self._port is not None
        self._serve_http(self._port)
        executor.resume()

    @property
    def paused(self) -> bool:
        return self._executor is not None and self._httpd is None and not self._stopping

    def stop(self, timeout: float = 10.0) -> None:
        """Stop everything; pending retries and future-``ts`` runs are dropped (left running).

        Records stay readable after stop.
        """
        with self._lock:
            self._stopping = True
            self._changed.notify_all()
        stopped = True
        # Executor first: a function still running may send events to the Event API.
        if self._executor is not None:
            stopped = self._executor.stop(timeout)
        stopped = self._close_http(timeout) and stopped
        if not stopped:
            raise HarnessError(f"harness threads did not stop within {timeout}s")

    def __enter__(self) -> InngestHarness:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses & modes

    @property
    def port(self) -> int:
        """The loopback port; the same after :meth:`pause` and :meth:`resume`."""
        if self._port is None:
            raise HarnessError("harness not started")
        return self._port

    def retry_wait(self, attempt: int) -> float:
        """Seconds before the retry of a run whose ``attempt`` (0-based) failed without a
        ``retry-after``: ``retry_delay`` × ``retry_backoff`` ** attempt, at most
        ``max_retry_delay``. Inngest's own schedule (15 s, 30 s, 1 min...) also adds jitter."""
        wait = self.retry_delay * self.retry_backoff**attempt
        return wait if self.max_retry_delay is None else min(wait, self.max_retry_delay)

    @property
    def event_api_url(self) -> str:
        """Origin for the SDK's ``event_api_base_url`` / ``INNGEST_EVENT_API_BASE_URL``."""
        return f"http://{self._host}:{self.port}"

    @property
    def api_url(self) -> str:
        """Origin for the SDK's ``api_base_url`` / ``INNGEST_API_BASE_URL`` (registration)."""
        return f"http://{self._host}:{self.port}"

    @property
    def server_kind(self) -> ServerKind:
        """``cloud`` with a signing key, else ``dev``: sent as ``x-inngest-server-kind``."""
        return "cloud" if self.signing_key is not None else "dev"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``inngest.Inngest(app_id=..., **h.client_kwargs())``."""
        kwargs: dict[str, Any] = {
            "api_base_url": self.api_url,
            "event_api_base_url": self.event_api_url,
            "is_production": self.signing_key is not None,
        }
        if self.signing_key is not None:
            kwargs["signing_key"] = self.signing_key
        if self.event_key is not None:
            kwargs["event_key"] = self.event_key
        return kwargs

    def sign(self, body: bytes, *, timestamp: int | None = None) -> str:
        """An ``X-Inngest-Signature`` for ``body`` with this harness's signing key."""
        if self.signing_key is None:
            raise HarnessError("dev-mode harness has no signing key")
        return sign_body(body, self.signing_key, timestamp=timestamp)

    # ------------------------------------------------------------------ Event API controls

    def fail_event_api(
        self,
        status: int,
        *,
        times: int | None = None,
        body: dict[str, Any] | str | None = None,
        accept: bool = False,
    ) -> None:
        """Make ``POST /e/...`` answer ``status`` (for the next ``times`` requests, or all).

        ``body`` defaults to ``{"error": ..., "status": status}``; a str is sent as text (to
        mimic a proxy's non-JSON 502). With ``accept=True`` the events are still accepted and
        run, only the answer is replaced (a response lost after the server took the events).
        """
        if body is None:
            body = {"error": f"harness: forced status {status}", "status": status}
        with self._lock:
            self._forced = _ForcedAnswer(status, body, times, accept)

    def reset_event_api(self) -> None:
        """Back to normal answers."""
        with self._lock:
            self._forced = None

    # ------------------------------------------------------------------ registration

    def register_app(
        self,
        serve_url: str,
        *,
        in_band: bool = False,
        timeout: float = 10.0,
    ) -> list[RegisteredFunction]:
        """Sync the app served at ``serve_url`` and return its registered functions.

        Out-of-band (default, dev and cloud): ``PUT serve_url`` with
        ``x-inngest-server-kind``; the SDK answers by POSTing its configs to
        ``{api_base_url}/fn/register`` before it answers the PUT. In cloud mode the PUT is
        signed (so it also works with ``INNGEST_ENABLE_UNAUTHED_SYNC=false``).
        In-band (cloud only): a signed ``PUT`` with ``x-inngest-sync-kind: in_band`` and body
        ``{"url": serve_url}``; the SDK returns the configs in its (signed) answer.
        Waits (deadline ``timeout``) until the functions are known.
        """
        if in_band:
            return self._register_in_band(serve_url, timeout)
        headers: dict[str, str] = {H_SERVER_KIND: self.server_kind}
        if self.signing_key is not None:
            headers[H_SIGNATURE] = self.sign(b"")
        with self._lock:
            before = len(self._apps)
        res = self._call_app("PUT", serve_url, headers=headers, timeout=timeout)
        body = parse_body(res.content)
        if res.status_code != 200 or (isinstance(body, dict) and "error" in body):
            # The SDK answers 200 even when /fn/register failed, passing our error through.
            raise HarnessError(f"sync PUT {serve_url} answered {res.status_code}: {body!r}")
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._apps) > before, timeout):
                raise TimeoutError(f"no registration arrived from {serve_url} in {timeout}s")
            new_apps = self._apps[before:]
            # Prefer this app's own sync if another app synced meanwhile (the SDK reports the
            # URL it was reached at, unless serve_origin/serve_path override it).
            app = next((a for a in reversed(new_apps) if a.url == serve_url), new_apps[-1])
            return [self._functions[fid] for fid in app.function_ids if fid in self._functions]

    def _register_in_band(self, serve_url: str, timeout: float) -> list[RegisteredFunction]:
        if self.signing_key is None:
            raise HarnessError("in-band sync needs cloud mode (a signing key)")
        body = canonical_json({"url": serve_url})
        headers = {
            "content-type": "application/json",
            H_SERVER_KIND: "cloud",
            H_SYNC_KIND: "in_band",
            H_SIGNATURE: self.sign(body),
        }
        res = self._call_app("PUT", serve_url, content=body, headers=headers, timeout=timeout)
        data = parse_body(res.content)
        if res.status_code != 200 or not isinstance(data, dict):
            raise HarnessError(f"in-band sync answered {res.status_code}: {data!r}")
        if res.headers.get(H_SYNC_KIND) != "in_band":
            raise HarnessError(f"SDK did not do an in-band sync: {dict(res.headers)}")
        if not verify_response_signature(
            res.content, res.headers.get(H_SIGNATURE), self.signing_key
        ):
            raise HarnessError("in-band sync answer has no valid signature")
        with self._lock:
            app = self._store_registration(
                data, "in_band", {k.lower(): v for k, v in res.headers.items()}
            )
            return [self._functions[fid] for fid in app.function_ids]

    def inspect(self, serve_url: str) -> dict[str, Any]:
        """``GET serve_url`` as Inngest does (signed in cloud mode): the SDK's inspection."""
        headers: dict[str, str] = {H_SERVER_KIND: self.server_kind}
        if self.signing_key is not None:
            headers[H_SIGNATURE] = self.sign(b"")
        res = self._call_app("GET", serve_url, headers=headers, timeout=self.call_timeout)
        data = parse_body(res.content)
        if res.status_code != 200 or not isinstance(data, dict):
            raise HarnessError(f"inspection answered {res.status_code}: {data!r}")
        return data

    def _call_app(self, method: str, url: str, **options: Any) -> httpx.Response:
        """One request of the harness's own to the served app (through `app_transport`)."""
        with httpx.Client(transport=self._app_transport) as client:
            return client.request(method, url, **options)

    def _store_registration(
        self,
        body: dict[str, Any],
        sync_kind: Literal["out_of_band", "in_band"],
        headers: dict[str, str],
    ) -> RegisteredApp:
        """Replace the app's functions with the configs in ``body`` (lock held)."""
        app_name = str(body.get("appname") or body.get("app_id") or "")
        configs = body.get("functions")
        if not app_name or not isinstance(configs, list):
            raise HarnessError(f"registration without app name or functions: {body!r}")
        fns: list[RegisteredFunction] = []
        for cfg in configs:
            step = (cfg.get("steps") or {}).get(UNSPECIFIED_STEP_ID) or {}
            retries = (step.get("retries") or {}).get("attempts")
            fns.append(
                RegisteredFunction(
                    id=str(cfg["id"]),
                    name=str(cfg.get("name") or cfg["id"]),
                    app_name=app_name,
                    url=str((step.get("runtime") or {}).get("url") or ""),
                    triggers=list(cfg.get("triggers") or []),
                    retries_configured=None if retries is None else int(retries),
                    raw=cfg,
                )
            )
        for fid in [fid for fid, f in self._functions.items() if f.app_name == app_name]:
            del self._functions[fid]
        for fn in fns:
            self._functions[fn.id] = fn
        app = RegisteredApp(
            app_name=app_name,
            url=str(body.get("url") or ""),
            sync_kind=sync_kind,
            function_ids=[f.id for f in fns],
            headers=headers,
            body=body,
        )
        self._apps.append(app)
        self._changed.notify_all()
        return app

    def _handle_register(
        self, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any] | str]:
        if self.signing_key is not None:
            expected = f"Bearer {hash_signing_key(self.signing_key)}"
            if headers.get("authorization") != expected:
                return 401, {"error": "harness: missing or wrong signing-key bearer token"}
        body = parse_body(raw)
        if not isinstance(body, dict):
            return 400, {"error": "harness: registration body is not a JSON object"}
        with self._lock:
            try:
                self._store_registration(body, "out_of_band", headers)
            except (HarnessError, KeyError, TypeError, ValueError) as err:
                self._errors.append(f"registration rejected: {err}")
                return 400, {"error": f"harness: {err}"}
        return 200, {"ok": True, "modified": True}

    # ------------------------------------------------------------------ Event API

    def _handle_events(
        self, event_key: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        body = parse_body(raw)
        now = time.time()
        with self._lock:
            status, answer = self._accept_events(event_key, headers, body, now)
            wait = self._rate_wait(event_key, now) if status == 429 and self.rate_limit else None
            self._requests.append(
                EventApiRequest(
                    event_key=event_key,
                    status=status,
                    body=body,
                    response=answer if isinstance(answer, dict) else {"text": answer},
                    headers=headers,
                    received_at=now,
                )
            )
            self._changed.notify_all()
        return status, answer, {H_RETRY_AFTER: str(wait)} if wait else {}

    def _rate_wait(self, event_key: str, now: float) -> int:
        """Whole seconds until the key's oldest request leaves the window (lock held)."""
        assert self.rate_limit is not None
        oldest = (self._recent.get(event_key) or [now])[0]
        return max(1, math.ceil(oldest + self.rate_limit[1] - now))

    def _over_rate(self, event_key: str, now: float) -> bool:
        """Count a request against the key's sliding window; True when over (lock held)."""
        if self.rate_limit is None:
            return False
        limit, period = self.rate_limit
        recent = [t for t in self._recent.get(event_key, []) if now - t < period]
        self._recent[event_key] = recent
        if len(recent) >= limit:
            return True
        recent.append(now)
        return False

    def _accept_events(
        self, event_key: str, headers: dict[str, str], body: Any, now: float
    ) -> tuple[int, dict[str, Any] | str]:
        forced = self._forced
        if forced is not None:
            if forced.remaining is not None:
                forced.remaining -= 1
                if forced.remaining <= 0:
                    self._forced = None
            if not forced.accept:
                return forced.status, forced.body
        if self.event_key is not None and event_key != self.event_key:
            return 401, {"error": "Event key not found", "status": 401}
        if self._over_rate(event_key, now):
            return 429, {"error": "rate limit exceeded", "status": 429}
        if body is None or isinstance(body, str) or body == []:
            return 400, {"error": "harness: the body is not a JSON event or array", "status": 400}
        seed = headers.get(H_EVENT_ID_SEED)
        ids: list[str] = []
        for index, item in enumerate(body if isinstance(body, list) else [body]):
            problem = event_problem(item, self.max_event_bytes)
            if problem is not None:
                # Inngest answers with what it took so far ("" when nothing), which will run.
                return 400, {"ids": ids or [""], "status": 400, "error": problem}
            internal_id = seeded_event_id(seed, index) or new_ulid()
            event_id = item.get("id") or internal_id
            ts = item.get("ts") or int(now * 1000)
            payload = {**item, "id": event_id, "ts": ts, "data": item.get("data") or {}}
            self._events.append(
                EventRecord(
                    name=payload["name"],
                    data=payload["data"],
                    id=event_id,
                    internal_id=internal_id,
                    ts=ts,
                    received_at=now,
                    payload=payload,
                )
            )
            ids.append(internal_id)
            self._dispatch(payload, now)
        if forced is not None and forced.accept:
            return forced.status, forced.body
        return 200, {"ids": ids, "status": 200}

    def _dispatch(self, event: dict[str, Any], now: float | None = None) -> None:
        """Start a run of every function triggered by ``event``, once per function and event
        id within the dedup window, and resume the runs waiting for it (lock held)."""
        now = time.time() if now is None else now
        self._require_executor().event_sent(event)
        for fn in list(self._functions.values()):
            for trigger in fn.triggers:
                pattern = trigger.get("event")
                if not isinstance(pattern, str) or not event_name_matches(pattern, event["name"]):
                    continue
                try:
                    matched = expression_matches(trigger.get("expression"), event)
                except UnsupportedExpression as err:
                    self._errors.append(f"{fn.id}: unsupported trigger expression {err}")
                    continue
                if matched:
                    seen = self._seen_ids.get((fn.id, event["id"]))
                    if seen is None or now - seen >= self.dedup_window:
                        self._seen_ids[(fn.id, event["id"])] = now
                        self._require_executor().new_run(fn, event)
                    break

    # ------------------------------------------------------------------ runs

    def start_run(self, function_id: str, event: dict[str, Any] | None = None) -> str:
        """Start a run of ``function_id`` directly (no trigger matching; cron functions too).

        An id the harness never saw registered gives a run that is failed at once.
        Returns the run id.
        """
        payload: dict[str, Any] = {"name": "harness/direct", "data": {}, **(event or {})}
        payload.setdefault("id", new_ulid())
        payload.setdefault("ts", int(time.time() * 1000))
        with self._lock:
            executor = self._require_executor()
            fn = self._functions.get(function_id)
            if fn is None:
                error = {"message": f"harness: function {function_id!r} is not registered"}
                return executor.failed_run(function_id, payload, error).run_id
            return executor.new_run(fn, payload).run_id

    def _on_run_failed(self, run: Run) -> str | None:
        """Emit ``inngest/function.failed`` for a failed run, as Inngest does (lock held).

        Not for runs started by an ``inngest/...`` event, so a failing failure handler
        cannot loop. The event triggers the SDK's ``{fn_id}-failure`` function, whose
        trigger expression is ``event.data.function_id == '<app>-<fn>'``.
        """
        if str(run.event.get("name", "")).startswith("inngest/"):
            return None
        error = run.error if isinstance(run.error, dict) else {"message": str(run.error)}
        now = time.time()
        event: dict[str, Any] = {
            "name": FUNCTION_FAILED_EVENT,
            "data": {
                "error": {"name": "Error", "message": "", **error},
                "event": run.event,
                "function_id": run.function_id,
                "run_id": run.run_id,
            },
            "id": new_ulid(),
            "ts": int(now * 1000),
        }
        self._events.append(
            EventRecord(
                name=FUNCTION_FAILED_EVENT,
                data=event["data"],
                id=event["id"],
                internal_id=event["id"],
                ts=event["ts"],
                received_at=now,
                internal=True,
                payload=event,
            )
        )
        self._dispatch(event)
        return str(event["id"])

    # ------------------------------------------------------------------ records & waits

    @property
    def events(self) -> list[EventRecord]:
        """Every accepted event (repeats of an id included), in arrival order."""
        with self._lock:
            return list(self._events)

    @property
    def event_api_requests(self) -> list[EventApiRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def functions(self) -> dict[str, RegisteredFunction]:
        with self._lock:
            return dict(self._functions)

    @property
    def apps(self) -> list[RegisteredApp]:
        with self._lock:
            return list(self._apps)

    @property
    def errors(self) -> list[str]:
        """Things the harness refused or could not evaluate (e.g. trigger expressions)."""
        with self._lock:
            return list(self._errors)

    def runs(self, function_id: str | None = None) -> list[Run]:
        """Snapshot (deep copy) of the runs, optionally of one function, in creation order."""
        with self._lock:
            return copy.deepcopy(self._select_runs(function_id))

    def run(self, run_id: str) -> Run:
        with self._lock:
            return copy.deepcopy(self._all_runs()[run_id])

    def _all_runs(self) -> dict[str, Run]:
        return self._executor.runs if self._executor is not None else {}

    def _select_runs(self, function_id: str | None) -> list[Run]:
        return [r for r in self._all_runs().values() if function_id in (None, r.function_id)]

    def _require_executor(self) -> Executor:
        if self._executor is None:
            raise HarnessError("harness not started")
        return self._executor

    def wait_for_runs(
        self,
        predicate_or_count: int | Callable[[Sequence[Run]], bool],
        timeout: float,
        *,
        function_id: str | None = None,
    ) -> list[Run]:
        """Wait until ``count`` runs have finished, or ``predicate(runs)`` holds.

        ``function_id`` (``inngest.Function.id``) narrows the runs considered. The predicate
        sees live records under the harness lock: read only. Returns a snapshot of the runs
        considered; raises TimeoutError (listing them) after ``timeout`` seconds.
        """
        predicate = _at_least(predicate_or_count, lambda runs: sum(r.finished for r in runs))
        return self._wait(
            lambda: predicate(self._select_runs(function_id)),
            lambda: copy.deepcopy(self._select_runs(function_id)),
            timeout,
            f"runs ({predicate_or_count!r}, function_id={function_id!r})",
        )

    def wait_until_idle(self, timeout: float) -> list[Run]:
        """Wait until no run is running (pending retries and future ``ts`` count as running)."""
        return self.wait_for_runs(lambda runs: all(r.finished for r in runs), timeout)

    def wait_for_events(
        self,
        predicate_or_count: int | Callable[[Sequence[EventRecord]], bool],
        timeout: float,
        *,
        name: str | None = None,
    ) -> list[EventRecord]:
        """Wait until ``count`` events (named ``name`` if given) arrived, or the predicate holds."""

        def select() -> list[EventRecord]:
            return [e for e in self._events if name in (None, e.name)]

        predicate = _at_least(predicate_or_count, len)
        return self._wait(
            lambda: predicate(select()),
            select,
            timeout,
            f"events ({predicate_or_count!r}, name={name!r})",
        )

    def _wait(
        self,
        done: Callable[[], bool],
        result: Callable[[], T],
        timeout: float,
        what: str,
    ) -> T:
        with self._changed:
            ok = self._changed.wait_for(lambda: self._stopping or done(), timeout)
            if ok and not self._stopping:
                return result()
            state = self._describe()
        reason = "the harness stopped" if self._stopping else f"{timeout}s passed"
        raise TimeoutError(f"{reason} waiting for {what}; harness state:\n{state}")

    def _describe(self, last: int = 15) -> str:
        """The last few events, runs and errors, for timeout messages (lock held)."""
        runs = list(self._all_runs().values())
        lines = [f"  {len(self._events)} events, {len(runs)} runs; the last ones:"]
        lines += [f"  event {e.name} id={e.id}" for e in self._events[-last:]]
        for r in runs[-last:]:
            calls = [(a.attempt, a.step_id[:8], a.status_code) for a in r.attempts]
            lines.append(f"  run {r.function_id} {r.status} calls={calls} error={r.error!r}"[:300])
        lines += [f"  error: {e}" for e in self._errors[-last:]]
        return "\n".join(lines)


class _HarnessHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        harness: InngestHarness,
    ) -> None:
        super().__init__(address, handler)
        self.harness = harness


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes ``POST /e/{key}`` and ``POST /fn/register``; HTTP/1.0, one request a connection."""

    server: _HarnessHTTPServer
    server_version = "inngest-test-harness"

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = urllib.parse.urlsplit(self.path).path
        harness = self.server.harness
        if path.startswith("/e/"):
            key = urllib.parse.unquote(path[len("/e/") :])
            status, body, extra = harness._handle_events(key, headers, raw)
            self._answer(status, body, extra)
        elif path == "/fn/register":
            self._answer(*harness._handle_register(headers, raw))
        else:
            self._answer(404, {"error": f"harness: no route POST {path}"})

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path == "/health":
            self._answer(200, {"status": 200})
        else:
            self._answer(404, {"error": f"harness: no route GET {self.path}"})

    def _answer(
        self, status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None
    ) -> None:
        if isinstance(body, str):
            data, ctype = body.encode(), "text/plain"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging."""
