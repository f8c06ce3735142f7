"""The event catalogue: the single declaration of every event type.

Why one table: the same events appear as Lua tables handed to plugins, as JSON lines on the
backchannel, in the HTTP event-type listing, in validation and in the docs. Declaring them once
here, and deriving all of those from :data:`CATALOGUE`, means a field cannot exist in one place and
be missing (or typed differently) in another.

Two kinds of events (DESIGN.md §6):

* **hub events** (``origin="hub"``): exactly the "Events" table of ``cameras-api.md``, with our
  extra fields. They are *closed*: an unknown field is an error, because the only producer is our
  own code and a misspelt field must fail loudly in a test instead of silently reaching plugins
  as a missing value.
* **camera-side notifications** (``origin="camera"``): the TomTom Bandit backchannel catalogue
  (``protocols.md`` §3.3), delivered under their own names with ``source`` (where they came from)
  and, when known, ``streamId``. They are *open*: cameras and firmware versions add fields, so
  declared fields are type-checked when present and anything else is let through.

Every event is one flat table: ``event`` (its name) plus its fields. ``event`` is implicit and is
not listed in :attr:`EventType.fields`.

This module imports nothing from hubruntime (only the standard library): the arrows of DESIGN.md
§2 point into it, and tools, tests and the Lua side can load it without starting anything.
"""

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

__all__ = [
    "CATALOGUE",
    "EventType",
    "EventValidationError",
    "Field",
    "FieldType",
    "UnknownEventError",
    "describe",
    "from_notification",
    "get",
    "make_event",
    "to_json",
    "validate",
]

FieldType = Literal["string", "number", "integer", "boolean", "table", "array", "any"]
"""The value types a field may declare, in Lua/JSON vocabulary rather than Python's, because
plugin authors and HTTP clients read them: ``table`` is a JSON object (Python dict), ``array`` a
JSON array (list or tuple), ``any`` any JSON value."""

_FIELD_TYPES: frozenset[str] = frozenset(get_args(FieldType))

# "a string", "an integer": used in error messages so they read as sentences.
_ARTICLED: Mapping[str, str] = MappingProxyType(
    {
        "string": "a string",
        "number": "a number",
        "integer": "an integer",
        "boolean": "a boolean",
        "table": "a table",
        "array": "an array",
        "any": "any JSON value",
    }
)


# --------------------------------------------------------------------------------------------
# Declarations


@dataclass(frozen=True)
class Field:
    """One field of an event table.

    ``required`` means the field is present in every event of its type (the ``+`` of
    cameras-api.md); an optional field is either absent or holds a value of ``type`` (never
    ``None``/nil, which a Lua table cannot hold anyway), except that an ``any`` field may be null.
    """

    name: str
    type: FieldType
    required: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        # Checked here so that a mistake in the catalogue fails at import, not at first use.
        if self.type not in _FIELD_TYPES:
            raise ValueError(
                f"field {self.name!r}: unknown type {self.type!r}, "
                f"expected one of {', '.join(sorted(_FIELD_TYPES))}"
            )


@dataclass(frozen=True)
class EventType:
    """One event type: its name, its fields and where it comes from.

    ``stream_scoped`` is true exactly when the event concerns one registered stream and so always
    carries ``streamId`` (a required string field); camera notifications are not stream-scoped
    because a camera that is not (yet) bound to a stream id may still send them. ``open`` lets
    extra, undeclared fields through validation (camera notifications only, see module doc).
    """

    name: str
    fields: tuple[Field, ...]
    origin: Literal["hub", "camera"]
    stream_scoped: bool
    doc: str = ""
    open: bool = False

    def __post_init__(self) -> None:
        # Accept any iterable of fields but store a tuple, so the frozen type stays hashable.
        object.__setattr__(self, "fields", tuple(self.fields))
        if self.origin not in ("hub", "camera"):
            raise ValueError(f"{self.name}: origin must be 'hub' or 'camera', not {self.origin!r}")
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"{self.name}: duplicate fields {duplicates}")
        if "event" in names:
            raise ValueError(f"{self.name}: 'event' is implicit and must not be declared")
        stream_id = next((f for f in self.fields if f.name == "streamId"), None)
        carries = stream_id is not None and stream_id.required and stream_id.type == "string"
        if carries != self.stream_scoped:
            raise ValueError(
                f"{self.name}: stream_scoped={self.stream_scoped} but streamId is "
                f"{'a required string' if carries else 'not a required string'}"
            )


class UnknownEventError(KeyError):
    """An event name that is not in the catalogue.

    A ``KeyError`` so that code treating the catalogue as a mapping can catch it as one; ``str()``
    gives the plain message (a bare ``KeyError`` would print it quoted).
    """

    def __init__(self, name: object) -> None:
        message = f"unknown event type {name!r}"
        if isinstance(name, str):
            close = difflib.get_close_matches(name, _NAMES, n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
        super().__init__(message)
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


class EventValidationError(ValueError):
    """An event table that does not match its declaration.

    The message names the event, the field, what was expected and what was given, because it ends
    up verbatim in a Lua error, an HTTP 400 body or a log line, where nobody can inspect the value.
    ``event`` and ``field`` are kept as attributes for callers that build their own replies.
    """

    def __init__(self, event: str, field: str | None, message: str) -> None:
        super().__init__(f"{event}: {message}")
        self.event = event
        self.field = field


# --------------------------------------------------------------------------------------------
# Value constraints beyond the type. Keyed by field name because each such field means the same
# thing in every event that declares it; applied only to declared fields. Field docs quote these
# tables, so the documentation cannot drift from what validation accepts.

_ENUMS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "track": ("video", "audio"),
        "reason": ("refused", "timeout", "dns", "unauthorized", "not_found", "protocol"),
    }
)

# Tables with a fixed shape: exactly these keys, each a string.
_TABLE_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({"cloudStorageKey": ("uuid", "key")})


def _one_of(field_name: str) -> str:
    return "one of " + ", ".join(f"`{v}`" for v in _ENUMS[field_name])


def _shape(field_name: str) -> str:
    return "{" + ", ".join(f"{k}=<string>" for k in _TABLE_KEYS[field_name]) + "}"


# --------------------------------------------------------------------------------------------
# Hub events (cameras-api.md, "Events"). Fields marked (ours) are hubruntime's additions.

_STREAM_ID = Field("streamId", "string", True, "id the stream was registered with")
_LOCAL_RTSP_URL = Field(
    "localRtspUrl",
    "string",
    True,
    "the hub's RTSP address of the stream, e.g. rtsp://<lan-ip>:5554/<id>",
)
_SNAPSHOT_ID = Field("snapshotId", "string", True, "the id given to make_stream_snapshot, echoed")
_USER_DATA = Field("user_data", "any", False, "the user_data given to create_audio_stream, echoed")


def _error_message(required: bool, when: str = "") -> Field:
    doc = "what went wrong, human-readable; camera credentials redacted"
    return Field("errorMessage", "string", required, f"{doc}; {when}" if when else doc)


def _hub(name: str, doc: str, *fields: Field) -> EventType:
    return EventType(name, (_STREAM_ID, *fields), "hub", True, doc)


_HUB_EVENTS: tuple[EventType, ...] = (
    _hub(
        "live_rtsp_stream_started",
        "Re-publishing on the hub's RTSP server began (after create_live_rtsp_stream).",
        _LOCAL_RTSP_URL,
    ),
    _hub(
        "live_rtsp_stream_stopped",
        "Re-publishing ended: after delete_live_rtsp_stream, or creating it failed.",
        _error_message(False, "present only on failure"),
    ),
    _hub(
        "live_rtsp_stream_updated",
        "The hub's LAN address changed, so the live stream's local URL did too.",
        _LOCAL_RTSP_URL,
    ),
    _hub(
        "stream_snapshotted",
        "A still image of the stream was stored (after make_stream_snapshot).",
        _SNAPSHOT_ID,
        Field(
            "cloudStorageKey",
            "table",
            True,
            f"where the image is stored: {_shape('cloudStorageKey')}",
        ),
        Field("capturedAt", "string", False, "(ours) UTC time the image was taken, ISO 8601"),
    ),
    _hub(
        "stream_snapshot_error",
        "A snapshot failed; nothing was stored.",
        _SNAPSHOT_ID,
        _error_message(True),
    ),
    _hub("audio_stream_started", "The audio stream to the camera is up.", _USER_DATA),
    _hub(
        "audio_stream_stopped",
        "The audio stream was closed by the camera or by delete_audio_stream.",
        _USER_DATA,
    ),
    _hub(
        "audio_stream_error",
        "Creating or running the audio stream failed; it is not deleted by itself.",
        _error_message(True),
        _USER_DATA,
    ),
    _hub(
        "making_video_particle_failed",
        "The recording's short preview (video particle) will not be made.",
        _error_message(True),
    ),
    _hub(
        "camera_accumulated_delay",
        "The stream is more than 5 s behind wall time; the hub restarts reading it at once.",
        Field("delaySecs", "number", False, "(ours) how far behind wall time, in seconds"),
    ),
    _hub(
        "camera_packet_delay",
        "The gap between two consecutive packets exceeded the threshold (1 s default).",
        Field("gapSecs", "number", False, "(ours) length of the gap, in seconds"),
        Field("track", "string", False, f"(ours) the track that stalled: {_one_of('track')}"),
    ),
    _hub(
        "camera_unreachable",
        "The stream cannot be opened, or FFmpeg fails reading it.",
        Field("reason", "string", False, f"(ours) classified cause: {_one_of('reason')}"),
        _error_message(False, "(ours)"),
    ),
    _hub(
        "camera_stream_closed",
        "Reading ended for another reason; the hub restarts it.",
        Field("attempt", "integer", False, "(ours) number of the restart about to be made"),
    ),
    _hub(
        "cloud_tunnel_rejected",
        "The cloud refused the SSH tunnel for remote viewing.",
        _error_message(False, "(ours)"),
    ),
    _hub(
        "cloud_tunnel_established",
        "The SSH tunnel is up; remote viewing works.",
        Field("remoteRtspUrl", "string", False,
              "(ours) where remote users reach the stream: rtsp://<relay>:<port>/<id>"),
    ),
    _hub(
        "osc_state_changed",
        "(ours) An OSC camera's state fingerprint changed (seen through /osc/checkForUpdates); "
        "the hub fetched /osc/state and lists what changed.",
        Field("source", "string", True, "always \"osc\""),
        Field("fingerprint", "string", True, "the camera's new state fingerprint"),
        Field("changed", "array", True, "names of the state keys whose values changed"),
        Field("state", "table", True, "the changed keys with their new values (removed: null)"),
    ),
    EventType(
        "hub_connected_to_local_network", (), "hub", False, "A Wi-Fi or Ethernet link came up."
    ),
    EventType(
        "hub_disconnected_from_local_network",
        (),
        "hub",
        False,
        "No link; also sent at once to a new subscriber while disconnected.",
    ),
)


# --------------------------------------------------------------------------------------------
# Camera-side notifications (protocols.md §3.3, TomTom Bandit backchannel). Every one carries the
# four common fields below; the payload fields the research names are declared optional, since
# only the Android SDK models vouch for most of them and firmware may omit any.

_COMMON_CAMERA_FIELDS: tuple[Field, ...] = (
    Field("source", "string", True, "where the notification came from (camera or connection)"),
    Field("streamId", "string", False, "the stream of that camera, when the hub knows it"),
    Field("items", "array", False, "the payload, when the camera sent an array"),
    Field("value", "any", False, "the payload, when the camera sent a scalar"),
)

_SHUTDOWN_FLAGS: tuple[str, ...] = (
    "battery_critical",
    "user_initiated",
    "overtemperature_shutdown",
)

_VIDEO_ITEMS = (
    "recorded videos, each a table: id, created, size_bytes, length_secs, nr_highlights, path, "
    "mode (normal/cinematic/slow_motion/time_lapse/night_lapse), aspect_ratio, resolution, "
    "framerate or framerate_fps, is_valid"
)
_IMAGE_ITEMS = (
    "captured images, each a table: id, path, created, lat_deg, lon_deg, "
    "mode (single/burst/continuous), resolution, aspect_ratio, is_valid"
)


def _camera(name: str, doc: str, *fields: Field) -> EventType:
    declared = {f.name: f for f in fields}
    # A notification may redeclare a common field to document it (e.g. `items` of
    # recording_stopped); the more specific declaration wins, keeping the common order.
    common = tuple(declared.pop(f.name, f) for f in _COMMON_CAMERA_FIELDS)
    return EventType(name, common + tuple(declared.values()), "camera", False, doc, open=True)


def _flag(name: str, doc: str) -> Field:
    return Field(name, "boolean", False, doc)


_CAMERA_EVENTS: tuple[EventType, ...] = (
    _camera(
        "recording_started",
        "The camera started recording.",
        _flag("recording_active", "true while recording"),
    ),
    _camera(
        "recording_stopped",
        "The camera stopped recording; the payload lists the videos written.",
        Field("items", "array", False, _VIDEO_ITEMS),
    ),
    _camera(
        "tag_created",
        "A highlight was tagged. Carries one typed attribute (tag_* flag or a max_* measure).",
        Field("id", "string", False, "highlight id (at most 36 characters)"),
        Field("offset_secs", "number", False, "position of the tag in the video, in seconds"),
        Field("highlight_offset_secs", "number", False, "start of the highlight relative to it"),
        Field("highlight_length_secs", "number", False, "length of the highlight, in seconds"),
        Field("delivered_offset_secs", "number", False, "start actually delivered, in seconds"),
        Field("delivered_length_secs", "number", False, "length actually delivered, in seconds"),
        _flag("tag_button", "tagged with the camera's button"),
        _flag("tag_mobile", "tagged from the mobile app"),
        _flag("tag_remote", "tagged with the remote"),
        Field("max_speed_mps", "number", False, "peak speed, m/s"),
        Field("max_acceleration", "number", False, "peak acceleration"),
        Field("max_deceleration", "number", False, "peak deceleration"),
        Field("max_g_force", "number", False, "peak g-force"),
        Field("max_vertical_speed_mps", "number", False, "peak vertical speed, m/s"),
        Field("max_heartrate_bpm", "integer", False, "peak heart rate, beats per minute"),
        Field("max_rotation", "integer", False, "peak rotation"),
    ),
    _camera(
        "photo_captured",
        "The camera took one or more photos; the payload lists them.",
        Field("items", "array", False, _IMAGE_ITEMS),
    ),
    _camera(
        "memory_low",
        "The camera's storage is nearly full.",
        Field("available_bytes", "integer", False, "free space left, in bytes"),
    ),
    _camera("memory_error", "The camera's storage failed; no payload is defined."),
    _camera(
        "wifi_stopped",
        "The camera's Wi-Fi is stopping.",
        _flag("wifi_active", "false once stopped"),
    ),
    _camera(
        "transcoding_progress",
        "Progress of a transcoding job on the camera.",
        Field("progress_pct", "integer", False, "percent done, 0-100"),
    ),
    _camera(
        "viewfinder_started",
        "The camera's viewfinder stream started.",
        _flag("viewfinder_active", "true while the viewfinder streams"),
    ),
    _camera(
        "viewfinder_stopped",
        "The camera's viewfinder stream stopped.",
        _flag("viewfinder_active", "false once stopped"),
    ),
    _camera(
        "shutting_down",
        "The camera is shutting down. The three flags are always present (false when the camera "
        "did not send them).",
        _flag("battery_critical", "the battery is exhausted"),
        _flag("user_initiated", "the user switched the camera off"),
        _flag("overtemperature_shutdown", "the camera is too hot"),
    ),
)


def _build() -> Mapping[str, EventType]:
    table: dict[str, EventType] = {}
    for etype in _HUB_EVENTS + _CAMERA_EVENTS:
        if etype.name in table:
            raise ValueError(f"event type {etype.name!r} declared twice")
        table[etype.name] = etype
    return MappingProxyType(table)


CATALOGUE: Mapping[str, EventType] = _build()
"""Every event type by name: hub events in the order of cameras-api.md, then camera
notifications in the order of protocols.md §3.3. Read-only, so no module can add or change an
event type behind the others' backs."""

_NAMES: tuple[str, ...] = tuple(CATALOGUE)

# Declared fields by event name, for O(1) lookups during validation.
_FIELDS: Mapping[str, Mapping[str, Field]] = MappingProxyType(
    {name: MappingProxyType({f.name: f for f in et.fields}) for name, et in CATALOGUE.items()}
)

# Keys a camera payload may not set: they say what the event is and where it came from, and a
# camera must not be able to impersonate another event, source or stream.
_RESERVED: frozenset[str] = frozenset({"event", "source", "streamId"})


# --------------------------------------------------------------------------------------------
# Checking values


def _kind(value: object) -> str:
    """The catalogue's name for the type of ``value`` (Python's name for non-JSON types)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _shown(value: object, limit: int = 60) -> str:
    """``value`` as an error message shows it: its kind and a bounded repr."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{_kind(value)} {text}"


def _has_type(ftype: str, value: object) -> bool:
    if ftype == "any":
        return True  # JSON-ability is checked separately, with a path to the culprit
    if ftype == "string":
        return isinstance(value, str)
    if ftype == "boolean":
        return isinstance(value, bool)
    if ftype == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if ftype == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return not isinstance(value, float) or math.isfinite(value)  # JSON has no NaN/Infinity
    if ftype == "table":
        return isinstance(value, dict)
    if ftype == "array":
        return isinstance(value, list | tuple)
    raise AssertionError(f"unhandled field type {ftype!r}")


def _is_utf8(text: str) -> bool:
    """False for text holding a lone surrogate (``"\\ud800"``, which ``json.loads`` produces
    from an escape): it cannot be encoded as UTF-8, so the event could not be logged, sent to a
    plugin or put on the backchannel; refused here, where the event is made."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_problem(value: object, path: str, active: set[int] | None = None) -> str | None:
    """Where ``value`` stops being JSON, as "<kind> at <path>", or None if it is JSON throughout.

    Strict JSON: object keys must be strings (other keys would not survive a round trip) and
    floats must be finite. Cycles are reported instead of recursing forever.
    """
    if isinstance(value, str):
        return None if _is_utf8(value) else f"text with a lone surrogate at {path}"
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"number {value!r} at {path}"
    if not isinstance(value, dict | list | tuple):
        return f"{_shown(value)} at {path}"
    active = set() if active is None else active
    if id(value) in active:
        return f"a cycle at {path}"
    active.add(id(value))
    try:
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"non-string key {key!r} at {path}"
                if not _is_utf8(key):
                    return f"key with a lone surrogate at {path}"
                problem = _json_problem(item, f"{path}.{key}", active)
                if problem:
                    return problem
        else:
            for index, item in enumerate(value):
                problem = _json_problem(item, f"{path}[{index}]", active)
                if problem:
                    return problem
    finally:
        active.discard(id(value))
    return None


def _check_value(event: str, field: Field, value: object) -> None:
    """Raise EventValidationError unless ``value`` is acceptable for the declared ``field``."""
    name = field.name
    if not _has_type(field.type, value):
        required = " is required and" if field.required else ""
        raise EventValidationError(
            event,
            name,
            f"field {name!r}{required} must be {_ARTICLED[field.type]}, got {_shown(value)}",
        )
    choices = _ENUMS.get(name)
    if choices is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise EventValidationError(
            event, name, f"field {name!r} must be one of {allowed}, got {_shown(value)}"
        )
    keys = _TABLE_KEYS.get(name)
    if keys is not None and (
        not isinstance(value, dict)
        or set(value) != set(keys)
        or not all(isinstance(value[k], str) for k in keys)
    ):
        raise EventValidationError(
            event, name, f"field {name!r} must be a table {_shape(name)}, got {_shown(value)}"
        )
    _check_json(event, name, value)


def _check_json(event: str, name: str, value: object) -> None:
    problem = _json_problem(value, name)
    if problem:
        raise EventValidationError(
            event, name, f"field {name!r} must hold only JSON values, got {problem}"
        )


def _check_names(event: str, keys: Mapping[Any, Any]) -> None:
    for key in keys:
        if not isinstance(key, str):
            raise EventValidationError(
                event, None, f"field names must be strings, got {_shown(key)}"
            )
        if not _is_utf8(key):
            raise EventValidationError(event, None, "a field name holds a lone surrogate")


# --------------------------------------------------------------------------------------------
# Public functions


def get(name: str) -> EventType:
    """The declaration of event type ``name``; UnknownEventError if there is none."""
    etype = CATALOGUE.get(name) if isinstance(name, str) else None
    if etype is None:
        raise UnknownEventError(name)
    return etype


def validate(event: Mapping[str, Any]) -> None:
    """Check ``event`` against its declaration; return nothing or raise.

    Raises UnknownEventError for a name that is not in the catalogue, unless the table has a
    ``source`` (then it is a camera notification the catalogue does not know yet, and only
    ``event`` and ``source`` being strings is checked: cameras add notifications, and refusing
    them would lose information). Raises EventValidationError for a missing required field, a
    value of the wrong type or outside its allowed values, a non-JSON value, or (hub events) an
    undeclared field.
    """
    if not isinstance(event, Mapping):
        raise EventValidationError(
            "<event>", None, f"an event must be a table, got {_shown(event)}"
        )
    name = event.get("event")
    if not isinstance(name, str):
        given = _shown(name) if "event" in event else "nothing"
        raise EventValidationError(
            "<event>", "event", f"field 'event' is required and must be a string, got {given}"
        )
    etype = CATALOGUE.get(name)
    if etype is None:
        if "source" not in event:
            raise UnknownEventError(name)
        source = event["source"]
        if not isinstance(source, str):
            raise EventValidationError(
                name, "source", f"field 'source' must be a string, got {_shown(source)}"
            )
        return
    _check_names(name, event)
    declared = _FIELDS[name]
    for field in etype.fields:
        if field.name in event:
            _check_value(name, field, event[field.name])
        elif field.required:
            raise EventValidationError(
                name,
                field.name,
                f"field {field.name!r} is required and must be {_ARTICLED[field.type]}, "
                "got nothing",
            )
    extra = [key for key in event if key != "event" and key not in declared]
    if not extra:
        return
    if etype.open:
        for key in extra:
            _check_json(name, key, event[key])
        return
    key = extra[0]
    close = difflib.get_close_matches(key, list(declared), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    allowed = ", ".join(declared) or "none"
    raise EventValidationError(
        name, key, f"unknown field {key!r}{hint}; declared fields: {allowed}"
    )


def make_event(name: str, /, **fields: Any) -> dict[str, Any]:
    """Build the table of event ``name``: ``{'event': name, **fields}``, validated.

    ``None`` stands for "absent" so that producers can pass optional values unconditionally
    (``errorMessage=err``): it is dropped for optional fields (and undeclared fields of open
    events). It is kept, and so rejected, for required fields and for unknown fields of closed
    events, where it would hide a typo.
    """
    etype = get(name)
    if "event" in fields:
        raise EventValidationError(
            name, "event", "field 'event' is the event's name: pass it as the first argument"
        )
    declared = _FIELDS[name]
    event: dict[str, Any] = {"event": name}
    for key, value in fields.items():
        if value is None:
            field = declared.get(key)
            droppable = not field.required if field is not None else etype.open
            if droppable:
                continue
        event[key] = value
    validate(event)
    return event


def from_notification(
    source: str, name: str, payload: Any, *, stream_id: str | None = None
) -> dict[str, Any]:
    """The event table of a camera-side notification (DESIGN.md §6), validated.

    ``{'event': name, 'source': source, 'streamId': stream_id (if given)}`` plus the payload: an
    object's fields merge into the table (except ``event``, ``source`` and ``streamId``, which are
    dropped so a camera cannot rename or re-attribute its notification), an array becomes
    ``items``, a scalar ``value``, and None adds nothing. For ``shutting_down`` the three flags
    are always present, False unless the payload object sets them.

    A name the catalogue does not know is accepted as an open camera event (cameras add
    notifications). Raises EventValidationError if the payload contradicts a declared field type,
    or if ``name`` is a hub event: a camera must not be able to pose as the hub.
    """
    etype = CATALOGUE.get(name) if isinstance(name, str) else None
    if etype is not None and etype.origin != "camera":
        raise EventValidationError(
            name, "event", f"{name!r} is a hub event; a camera notification cannot use its name"
        )
    event: dict[str, Any] = {"event": name, "source": source}
    if stream_id is not None:
        event["streamId"] = stream_id
    if isinstance(payload, Mapping):
        for key, value in payload.items():
            if key not in _RESERVED:
                event[key] = value
    elif isinstance(payload, list | tuple):
        event["items"] = list(payload)
    elif payload is not None:
        event["value"] = payload
    if name == "shutting_down":
        for flag in _SHUTDOWN_FLAGS:
            event.setdefault(flag, False)
    validate(event)
    return event


def to_json(event: Mapping[str, Any]) -> str:
    """``event`` as compact JSON text, non-ASCII kept as is (UTF-8 on the wire, not escapes).

    Does not validate: events are validated where they are made. NaN and infinities raise
    ValueError rather than producing text that is not JSON.
    """
    return json.dumps(dict(event), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def describe() -> list[dict[str, Any]]:
    """A JSON-able listing of every event type, in catalogue order, for the HTTP API and docs.

    Each entry: ``name``, ``origin``, ``streamScoped``, ``doc`` and ``fields`` (``name``,
    ``type``, ``required``, ``doc``; ``event`` itself is implicit and not listed). Built fresh on
    each call so callers may modify it.
    """
    return [
        {
            "name": etype.name,
            "origin": etype.origin,
            "streamScoped": etype.stream_scoped,
            "doc": etype.doc,
            "fields": [
                {"name": f.name, "type": f.type, "required": f.required, "doc": f.doc}
                for f in etype.fields
            ],
        }
        for etype in CATALOGUE.values()
    ]
