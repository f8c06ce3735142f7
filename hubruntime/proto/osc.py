"""Google Open Spherical Camera (OSC) API, level 2: bodies, replies, state diff, poll timing.

Sans-I/O (protocols.md §1): nothing here opens a socket, sleeps or reads a clock; times are
passed in. The same module serves both sides:

* the **client** side, used by ``hubruntime.sources.osc`` to follow a camera: request bodies,
  strict parsing of ``/osc/info``, ``/osc/state`` and ``/osc/checkForUpdates`` answers and of the
  common error body (§1.7), the diff between two state documents, and :class:`PollScheduler`,
  which decides what to ask next and when;
* the **server** side, for the hub's own ``/osc/*`` endpoints (DESIGN §7): :func:`error_body`
  with the exact codes of §1.7, :func:`fingerprint` of a state document, and the validation of a
  ``checkForUpdates`` request in the order §1.8 sets.

Why strict parsing on the client: the answers feed events that plugins act on, so a camera that
sends something else than §1 says must show up as a clear logged error (and a backoff), not as
an event with a missing fingerprint. Why lenient requests on the server side: clients in the
field omit bodies and headers (§1.8), and refusing them helps nobody.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from hubruntime.proto.backoff import Backoff

__all__ = [
    "CAMERA_IN_EXCLUSIVE_USE",
    "DISABLED_COMMAND",
    "ERROR_CODES",
    "INVALID_PARAMETER_NAME",
    "INVALID_PARAMETER_VALUE",
    "MISSING_PARAMETER",
    "NAME_CHECK_FOR_UPDATES",
    "NAME_COMMANDS_STATUS",
    "NAME_INFO",
    "NAME_STATE",
    "REQUEST_HEADERS",
    "RESPONSE_HEADERS",
    "SERVER_ERROR",
    "UNKNOWN_COMMAND",
    "OscErrorReply",
    "OscInfo",
    "OscProtocolError",
    "OscRequestError",
    "OscState",
    "DelayPolicy",
    "PollScheduler",
    "StateDiff",
    "Step",
    "UpdateCheck",
    "check_for_updates_body",
    "check_for_updates_reply",
    "decode_reply",
    "diff_state",
    "encode",
    "error_body",
    "error_status",
    "fingerprint",
    "parse_check_for_updates_request",
    "parse_info",
    "parse_state",
    "parse_update",
    "same_value",
    "state_reply",
]

# --------------------------------------------------------------------------------------------
# Wire constants (§1.1, §1.7)

REQUEST_HEADERS: Mapping[str, str] = {"X-XSRF-Protected": "1", "Accept": "application/json"}
"""Every client request carries the XSRF header (§1.1); cameras may refuse requests without it."""

RESPONSE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "application/json; charset=utf-8"),
    ("X-Content-Type-Options", "nosniff"),
)
"""What every server answer carries (§1.1, the XSS/XSRF page)."""

NAME_INFO = "camera.info"
NAME_STATE = "camera.state"
NAME_CHECK_FOR_UPDATES = "camera.checkForUpdates"
NAME_COMMANDS_STATUS = "camera.commands.status"

UNKNOWN_COMMAND = "unknownCommand"
DISABLED_COMMAND = "disabledCommand"
CAMERA_IN_EXCLUSIVE_USE = "cameraInExclusiveUse"
MISSING_PARAMETER = "missingParameter"
INVALID_PARAMETER_NAME = "invalidParameterName"
INVALID_PARAMETER_VALUE = "invalidParameterValue"
SERVER_ERROR = "serverError"

ERROR_CODES: frozenset[str] = frozenset({
    UNKNOWN_COMMAND, DISABLED_COMMAND, CAMERA_IN_EXCLUSIVE_USE, MISSING_PARAMETER,
    INVALID_PARAMETER_NAME, INVALID_PARAMETER_VALUE, SERVER_ERROR,
})
"""The codes §1.7 defines. ``disabledCommand`` is level 2, ``cameraInExclusiveUse`` deprecated."""

_MAX_SHOWN = 200  # how much of a camera's non-JSON answer goes into an error message


# --------------------------------------------------------------------------------------------
# JSON


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(body: bytes | str) -> Any:
    """Strict JSON: ``NaN``/``Infinity`` (which Python accepts by default) are refused, because
    such a value could reach an event, and events must be JSON (the catalogue refuses them)."""
    return json.loads(body, parse_constant=_reject_constant)


def encode(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON, the body of a request or an answer."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _shown(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


# --------------------------------------------------------------------------------------------
# Server side: error bodies, fingerprints, request validation


def error_body(name: str, code: str, message: str) -> dict[str, Any]:
    """The common error body of §1.7: ``{"name", "state": "error", "error": {"code", "message"}}``.

    ``name`` is the endpoint or command (``camera.checkForUpdates``, ``camera.state``,
    ``camera.<command>``; see the ``NAME_*`` constants); ``code`` should be one of
    :data:`ERROR_CODES` (other codes are let through, for vendor extensions, but clients only
    know those); ``message`` is free text for people and is not localised. Send it with the
    status :func:`error_status` gives and the :data:`RESPONSE_HEADERS`.
    """
    return {"name": name, "state": "error", "error": {"code": code, "message": message}}


def error_status(code: str) -> int:
    """The HTTP status for an error ``code``: 500 for ``serverError`` (§1.4: "5XX"), else 400.

    §1.7: the errors the specification defines use 400, other client errors another 4XX, server
    failures 5XX; an unknown code is taken as a client error.
    """
    return 500 if code == SERVER_ERROR else 400


def _canonical(value: Any) -> Any:
    """``value`` with integral floats as ints, so that 1 and 1.0 (equal in JSON, see
    :func:`same_value`) hash alike; tuples as lists; anything not JSON raises ValueError."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not JSON")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"state key {key!r} is not a string")
            out[key] = _canonical(item)
        return out
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    raise ValueError(f"{type(value).__name__} is not JSON")


def fingerprint(state: dict) -> str:
    """A stable fingerprint of a JSON-able state document (§1.3 lets the server choose).

    A hash of the canonical JSON (sorted keys, no spaces, integral floats as ints): equal states
    give equal fingerprints whatever their key order, in any process and after a restart, so a
    client's stored fingerprint stays valid across hub restarts as long as the state is the same.
    24 hex digits (96 bits) of SHA-256: collisions are not a concern, and it stays short on the
    wire. Raises ValueError for a value that is not JSON.
    """
    text = json.dumps(_canonical(state), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class OscRequestError(ValueError):
    """A client request that §1 says to refuse; carries what to answer."""

    def __init__(self, name: str, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.name = name
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return error_status(self.code)

    def body(self) -> dict[str, Any]:
        return error_body(self.name, self.code, self.message)


def parse_check_for_updates_request(
    payload: Any, *, max_wait: int | None = None
) -> tuple[str, int | None]:
    """``(stateFingerprint, waitTimeout or None)`` of a checkForUpdates request body (decoded).

    Raises :class:`OscRequestError` in the order of §1.8: a missing fingerprint
    (``missingParameter``; also for an absent body or one that is not an object), then an unknown
    key (``invalidParameterName``), then a fingerprint that is not a string or a ``waitTimeout``
    that is not a non-negative integer, or above ``max_wait`` if given
    (``invalidParameterValue``). An integral float (``5.0``) counts as an integer: it is the
    same JSON number. How long to actually hold is the server's choice (cap it separately).
    """
    name = NAME_CHECK_FOR_UPDATES
    if not isinstance(payload, Mapping) or "stateFingerprint" not in payload:
        raise OscRequestError(name, MISSING_PARAMETER, "stateFingerprint is required")
    unknown = sorted(str(k) for k in payload if k not in ("stateFingerprint", "waitTimeout"))
    if unknown:
        raise OscRequestError(name, INVALID_PARAMETER_NAME,
                              f"unknown parameter {unknown[0]!r}")
    fp = payload["stateFingerprint"]
    if not isinstance(fp, str):
        raise OscRequestError(name, INVALID_PARAMETER_VALUE, "stateFingerprint must be a string")
    wait = payload.get("waitTimeout")
    if wait is None:
        return fp, None
    if isinstance(wait, float) and wait.is_integer():
        wait = int(wait)
    if isinstance(wait, bool) or not isinstance(wait, int) or wait < 0:
        raise OscRequestError(name, INVALID_PARAMETER_VALUE,
                              "waitTimeout must be a non-negative integer (seconds)")
    if max_wait is not None and wait > max_wait:
        raise OscRequestError(name, INVALID_PARAMETER_VALUE,
                              f"waitTimeout must be at most {max_wait}")
    return fp, wait


def state_reply(fingerprint: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/osc/state`` answer (§1.3)."""
    return {"fingerprint": fingerprint, "state": dict(state)}


def check_for_updates_reply(fingerprint: str, throttle: int = 0) -> dict[str, Any]:
    """The ``/osc/checkForUpdates`` answer (§1.4); ``throttle`` 0 says "I long-poll"."""
    return {"stateFingerprint": fingerprint, "throttleTimeout": throttle}


# --------------------------------------------------------------------------------------------
# Client side: requests and replies


def check_for_updates_body(fingerprint: str, wait_timeout: float | None) -> dict[str, Any]:
    """The checkForUpdates request: ``waitTimeout`` is integer seconds on the wire (§1.4), so a
    fractional value is rounded up (never to 0, which would ask for an immediate answer)."""
    body: dict[str, Any] = {"stateFingerprint": fingerprint}
    if wait_timeout is not None:
        if not wait_timeout >= 0:
            raise ValueError("wait_timeout must be >= 0")
        body["waitTimeout"] = math.ceil(wait_timeout)
    return body


class OscProtocolError(ValueError):
    """A camera answer that is not what §1 says (not JSON, a field missing or mistyped)."""


class OscErrorReply(Exception):
    """The camera answered with an error: an error status and/or the §1.7 error body.

    ``code`` and ``message`` come from the body when it has the §1.7 shape (Ricoh leaves out
    ``name``, which is accepted); otherwise ``code`` is None and ``message`` shows the start of
    whatever the body was.
    """

    def __init__(self, endpoint: str, status: int, code: str | None, message: str,
                 name: str | None = None) -> None:
        self.endpoint = endpoint
        self.status = status
        self.code = code
        self.message = message
        self.name = name
        what = f" {code}" if code else ""
        super().__init__(f"{endpoint}: HTTP {status}{what}: {message}" if message
                         else f"{endpoint}: HTTP {status}{what}")


def _error_fields(obj: Any) -> tuple[str, str, str | None] | None:
    """``(code, message, name)`` if ``obj`` is a §1.7 error body, else None."""
    if not isinstance(obj, Mapping):
        return None
    err = obj.get("error")
    if not isinstance(err, Mapping) or not isinstance(err.get("code"), str):
        return None
    if "state" in obj and obj["state"] != "error":
        return None
    message = err.get("message")
    name = obj.get("name")
    return (err["code"], message if isinstance(message, str) else "",
            name if isinstance(name, str) else None)


def decode_reply(endpoint: str, status: int, body: bytes) -> dict[str, Any]:
    """The JSON object a camera answered on ``endpoint`` (a path, for messages).

    Raises :class:`OscErrorReply` for a status outside 2XX, or a 2XX carrying an error body
    (``state: "error"``); :class:`OscProtocolError` for a 2XX whose body is not a JSON object.
    """
    try:
        obj: Any = _loads(body) if body.strip() else None
        bad_json: str | None = None
    except (ValueError, UnicodeDecodeError) as exc:
        obj, bad_json = None, str(exc)
    if not 200 <= status < 300:
        fields = _error_fields(obj)
        if fields is not None:
            code, message, name = fields
            raise OscErrorReply(endpoint, status, code, message, name)
        raise OscErrorReply(endpoint, status, None, _shown(body))
    if bad_json is not None:
        raise OscProtocolError(f"{endpoint}: answer is not JSON ({bad_json}): {_shown(body)!r}")
    if not isinstance(obj, dict):
        raise OscProtocolError(f"{endpoint}: answer is not a JSON object: {_shown(body)!r}")
    fields = _error_fields(obj)
    if fields is not None and obj.get("state") == "error":
        code, message, name = fields
        raise OscErrorReply(endpoint, status, code, message, name)
    return obj


@dataclass(frozen=True)
class OscInfo:
    """What ``/osc/info`` says that the hub uses (§1.2); ``raw`` keeps the rest.

    Parsed leniently: info "defines no errors", is only logged, and a camera with an odd info
    document can still have a perfectly good checkForUpdates.
    """

    manufacturer: str = ""
    model: str = ""
    firmware_version: str = ""
    api_level: tuple[int, ...] = (1,)
    raw: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        what = " ".join(p for p in (self.manufacturer, self.model) if p) or "camera"
        fw = f" firmware {self.firmware_version}" if self.firmware_version else ""
        return f"{what}{fw}, API level {'/'.join(map(str, self.api_level))}"


def parse_info(obj: Mapping[str, Any]) -> OscInfo:
    """The :class:`OscInfo` of a decoded ``/osc/info`` answer; fields of the wrong type are
    ignored (``apiLevel`` then defaults to ``[1]``, as §1.2 says for an absent one)."""

    def text(key: str) -> str:
        value = obj.get(key)
        return value if isinstance(value, str) else ""

    levels = obj.get("apiLevel")
    if isinstance(levels, list) and levels and all(
        isinstance(x, int) and not isinstance(x, bool) for x in levels
    ):
        api_level = tuple(levels)
    else:
        api_level = (1,)
    return OscInfo(text("manufacturer"), text("model"), text("firmwareVersion"), api_level,
                   dict(obj))


@dataclass(frozen=True)
class OscState:
    """A decoded ``/osc/state`` answer (§1.3)."""

    fingerprint: str
    state: dict[str, Any]


def parse_state(obj: Mapping[str, Any]) -> OscState:
    """Check a decoded ``/osc/state`` answer: ``fingerprint`` a string, ``state`` an object."""
    fp = obj.get("fingerprint")
    state = obj.get("state")
    if not isinstance(fp, str):
        raise OscProtocolError(f"/osc/state: 'fingerprint' must be a string, got {fp!r:.60}")
    if not isinstance(state, dict):
        raise OscProtocolError(f"/osc/state: 'state' must be an object, got {state!r:.60}")
    return OscState(fp, state)


@dataclass(frozen=True)
class UpdateCheck:
    """A decoded checkForUpdates answer: the current fingerprint and the suggested wait before
    the next call, None when the camera gave none (Ricoh's documented answer has none)."""

    fingerprint: str
    throttle: float | None


def parse_update(obj: Mapping[str, Any]) -> UpdateCheck:
    """Check a decoded checkForUpdates answer (§1.4; the Bubl compliance schema): the
    fingerprint a string, ``throttleTimeout`` absent/null or a finite number >= 0."""
    fp = obj.get("stateFingerprint")
    if not isinstance(fp, str):
        raise OscProtocolError(
            f"/osc/checkForUpdates: 'stateFingerprint' must be a string, got {fp!r:.60}")
    throttle = obj.get("throttleTimeout")
    if throttle is None:
        return UpdateCheck(fp, None)
    if (isinstance(throttle, bool) or not isinstance(throttle, int | float)
            or not math.isfinite(throttle) or throttle < 0):
        raise OscProtocolError(
            "/osc/checkForUpdates: 'throttleTimeout' must be a number >= 0, "
            f"got {throttle!r:.60}")
    return UpdateCheck(fp, float(throttle))


# --------------------------------------------------------------------------------------------
# State diff


def same_value(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same, by value, all the way down.

    Unlike ``==``: ``true`` is not ``1`` (Python says ``True == 1``, a camera switching a flag
    from 1 to true did change it). Like ``==``: ``1`` and ``1.0`` are the same number, key order
    of objects does not matter, array order does.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    return a == b


@dataclass(frozen=True)
class StateDiff:
    """What changed between two state documents.

    ``changed``: the top-level keys that were added, removed or got another value, sorted.
    ``values``: each changed key with its new value, ``None`` (JSON null) for a removed key.
    In a Lua event table a null cannot be stored, so a removed key is in ``changed`` but absent
    from ``state`` (``params.state[key] == nil``); JSON consumers see the explicit null.
    """

    changed: list[str]
    values: dict[str, Any]

    def __bool__(self) -> bool:
        return bool(self.changed)


def diff_state(old: Mapping[str, Any], new: Mapping[str, Any]) -> StateDiff:
    """The :class:`StateDiff` from ``old`` to ``new``; nested values compared with
    :func:`same_value`, so an object whose inner fields changed is one changed key."""
    changed = sorted(
        [k for k in new if k not in old or not same_value(old[k], new[k])]
        + [k for k in old if k not in new]
    )
    return StateDiff(changed, {k: new.get(k) for k in changed})


# --------------------------------------------------------------------------------------------
# Poll scheduling


class Step(Enum):
    """What the client asks the camera next."""

    INFO = "info"  # GET /osc/info, once, before anything else
    STATE = "state"  # POST /osc/state: first, after a new fingerprint, and after an error
    POLL = "poll"  # POST /osc/checkForUpdates with the fingerprint we hold


class DelayPolicy(Protocol):
    """Delays between failed attempts; ``hubruntime.proto.backoff.Backoff`` is one."""

    def next_delay(self, healthy_secs: float = 0.0) -> float: ...


class PollScheduler:
    """Decides what to ask a camera next, and at what (monotonic) time. Pure: times passed in.

    The cycle is INFO → STATE → POLL → POLL … ; a poll answering with another fingerprint than the
    one held leads to STATE (fetch it, diff), then back to POLL. Any failure waits a backoff delay
    and resumes at STATE (at INFO if info never succeeded): after an outage the camera may have
    rebooted or changed, and the stored fingerprint may be meaningless.

    When the next poll may start is ``max(last poll start + min_interval, last answer +
    throttle)``:

    * the camera's ``throttleTimeout`` is honoured (§1.4 "suggested wait"), capped at
      ``max_throttle`` so that a silly value cannot blind the hub for an hour;
    * ``min_interval`` between poll *starts* is our own floor. It is what protects a camera that
      answers at once with ``throttleTimeout: 0`` (or none) and an unchanged fingerprint: polls
      then come every ``min_interval``, never back to back. A true long-polling camera is not
      slowed by it, since its answers come after the hold (≥ ``min_interval``) or on a change.
      It applies after a change too: a camera whose fingerprint moves on every call (a clock in
      its state) then costs one poll and one state fetch per interval, and its changes are
      coalesced, instead of an event storm (DESIGN §3).
    """

    def __init__(self, *, min_interval: float = 1.0, max_throttle: float = 60.0,
                 backoff: DelayPolicy | None = None, now: float = 0.0) -> None:
        if min_interval < 0 or max_throttle < 0:
            raise ValueError("min_interval and max_throttle must be >= 0")
        self.min_interval = min_interval
        self.max_throttle = max_throttle
        self._backoff: DelayPolicy = backoff if backoff is not None else Backoff(jitter=False)
        self.step = Step.INFO
        self.due = now
        self.fingerprint: str | None = None
        self.failures = 0  # consecutive
        self._have_info = False
        self._last_poll_start: float | None = None
        self._throttle_until = -math.inf
        self._started: float | None = None
        self._healthy_since: float | None = now

    def next(self) -> tuple[Step, float]:
        """The step to take and the time at which to start it."""
        return self.step, self.due

    def begin(self, now: float) -> None:
        """The current step starts now (a poll's start is what ``min_interval`` counts from)."""
        self._started = now
        if self.step is Step.POLL:
            self._last_poll_start = now

    def info_done(self, now: float) -> None:
        self._have_info = True
        self._succeeded(now)
        self.step, self.due = Step.STATE, now

    def state_done(self, now: float, fingerprint: str) -> None:
        """The state was fetched: hold its fingerprint and poll (when allowed)."""
        self.fingerprint = fingerprint
        self._succeeded(now)
        self.step, self.due = Step.POLL, self._poll_due(now)

    def poll_done(self, now: float, fingerprint: str, throttle: float | None) -> bool:
        """A checkForUpdates answer; True if the fingerprint moved (the next step fetches the
        state at once), False if not (the next poll waits as the class doc says)."""
        self._succeeded(now)
        self._throttle_until = now + min(throttle or 0.0, self.max_throttle)
        if fingerprint != self.fingerprint:
            self.step, self.due = Step.STATE, now
            return True
        self.step, self.due = Step.POLL, self._poll_due(now)
        return False

    def failed(self, now: float) -> float:
        """The current step failed; returns the delay before the retry (also in :attr:`due`)."""
        healthy = now - self._healthy_since if self._healthy_since is not None else 0.0
        self._healthy_since = None
        self.failures += 1
        delay = self._backoff.next_delay(healthy)
        self.step = Step.STATE if self._have_info else Step.INFO
        self.due = now + delay
        return delay

    def _succeeded(self, now: float) -> None:
        self.failures = 0
        if self._healthy_since is None:
            self._healthy_since = self._started if self._started is not None else now

    def _poll_due(self, now: float) -> float:
        due = max(now, self._throttle_until)
        if self._last_poll_start is not None:
            due = max(due, self._last_poll_start + self.min_interval)
        return due
