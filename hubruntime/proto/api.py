"""Sans-I/O helpers of the HTTP API: query and body validation, times, paging envelopes.

Why here and not in ``hubruntime/api``: every rule about what a client may send (which query
parameters exist, their types and ranges, the fields of a JSON body) is a pure function of the
input, so it is tested exhaustively without a server, and the ASGI layer is left with routing,
auth and I/O. Nothing here imports trio or any other part of hubruntime (DESIGN.md §2).

The shapes follow ``protocols.md``: §2 (VXG Cloud VMS v2 event processing: the Tastypie-style
paging envelope, ``limit``/``offset``/``order_by``/``events``/``start``/``end``/``camid``/
``include_meta`` on the event listing, event bodies of ``camid``/``name``/``time``/``meta``).
The OSC side (§1) has its own sans-I/O module, ``proto/osc.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes, urlencode

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "EVENT_NAME_RE",
    "BodyError",
    "EventCreate",
    "EventQuery",
    "ParamError",
    "Paging",
    "Trigger",
    "TypeCreate",
    "TypeUpdate",
    "envelope",
    "format_time",
    "log_time",
    "page_links",
    "parse_bool",
    "parse_event_create",
    "parse_event_query",
    "parse_paging",
    "parse_query",
    "parse_time",
    "parse_trigger",
    "parse_type_create",
    "parse_type_update",
]

#: Page size when the client gives none: the VXG envelope example shows 20 (protocols.md §2.2).
DEFAULT_LIMIT = 20
#: Largest page served; a bigger ``limit`` is refused (400), not silently cut, so a client never
#: believes it got everything when it did not.
MAX_LIMIT = 1000
#: Largest ``offset`` accepted: beyond it SQLite would still scan, for no client's benefit.
MAX_OFFSET = 10_000_000
#: Most names in one ``events=`` filter.
MAX_EVENT_NAMES = 100
#: Names of event types a client may create. Catalogue names all match it too, so one rule
#: checks ``events=`` filters and custom type names alike.
EVENT_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")
_CAMID_MAX = 128
_META_MAX_KEYS = 100
_META_MAX_TEXT = 4096
_QUERY_MAX_FIELDS = 50


class ParamError(ValueError):
    """A bad query parameter; ``param`` names it (the HTTP 400 body carries both)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class BodyError(ValueError):
    """A bad JSON body field; ``param`` names the field (dotted path for nested ones)."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param = param


# --------------------------------------------------------------------------------------------
# Query strings


def parse_query(query: bytes | str) -> dict[str, str]:
    """The query string as a dict; a repeated or malformed parameter is a ParamError.

    Why not ``parse_qs``: a repeated parameter (``limit=1&limit=1000``) is ambiguous, and
    different layers picking different copies is a classic source of filter bypasses, so it is
    refused. Empty values are kept (``events=`` means "no names"). Names and values must be UTF-8
    once percent-decoded. At most 50 parameters.
    """
    raw = query.encode("utf-8") if isinstance(query, str) else query
    out: dict[str, str] = {}
    if not raw:
        return out
    parts = raw.split(b"&")
    if len(parts) > _QUERY_MAX_FIELDS:
        raise ParamError("query", f"too many query parameters (at most {_QUERY_MAX_FIELDS})")
    for part in parts:
        if not part:
            continue
        key_raw, _, value_raw = part.partition(b"=")
        shown = key_raw[:40].decode("latin-1")
        try:
            key = unquote_to_bytes(key_raw.replace(b"+", b" ")).decode("utf-8")
            value = unquote_to_bytes(value_raw.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise ParamError(shown, f"query parameter {shown!r} is not valid UTF-8") from None
        if not key:
            raise ParamError("query", "a query parameter has no name")
        if key in out:
            raise ParamError(key, f"query parameter {key!r} given more than once")
        out[key] = value
    return out


def _unknown(params: Mapping[str, str], known: Iterable[str]) -> None:
    known = set(known)
    for key in params:
        if key not in known:
            raise ParamError(
                key, f"unknown query parameter {key[:40]!r}; known: {', '.join(sorted(known))}"
            )


def _int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,12}", text):
        raise ParamError(name, f"{name} must be an integer {low}..{high}, got {text[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        raise ParamError(name, f"{name} must be an integer {low}..{high}, got {value}")
    return value


def parse_bool(name: str, text: str) -> bool:
    """``true``/``false``/``1``/``0`` (any case), as web clients send booleans in URLs."""
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ParamError(name, f"{name} must be true or false, got {text[:40]!r}")


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


def parse_paging(params: Mapping[str, str], *, extra: Iterable[str] = ()) -> Paging:
    """``limit``/``offset`` of a listing that has no other parameters than ``extra``."""
    _unknown(params, ("limit", "offset", *extra))
    return Paging(
        _int_param(params, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT),
        _int_param(params, "offset", 0, 0, MAX_OFFSET),
    )


@dataclass(frozen=True)
class EventQuery:
    """A validated ``GET /api/v2/storage/events/`` query.

    ``start``/``end`` are in the event log's time form (:func:`log_time`), inclusive.
    ``max_id`` is our addition, carried by the ``next``/``previous`` links so paging is not shifted
    by events logged after the first page (see :func:`page_links`).
    """

    limit: int = DEFAULT_LIMIT
    offset: int = 0
    newest_first: bool = True
    names: tuple[str, ...] | None = None
    start: str | None = None
    end: str | None = None
    camid: str | None = None
    include_meta: bool = False
    max_id: int | None = None


#: Every parameter of the event listing. ``token`` authenticates (protocols.md §2.1);
#: ``include_filemeta_download`` is accepted and ignored: the hub attaches no metadata files.
EVENT_QUERY_PARAMS = (
    "limit", "offset", "order_by", "events", "start", "end", "camid", "include_meta",
    "include_filemeta_download", "max_id", "token",
)


def parse_event_query(params: Mapping[str, str]) -> EventQuery:
    """Validate the listing query; ParamError names the first bad parameter."""
    _unknown(params, EVENT_QUERY_PARAMS)
    limit = _int_param(params, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
    offset = _int_param(params, "offset", 0, 0, MAX_OFFSET)
    order = params.get("order_by", "-time")
    if order not in ("time", "-time"):
        raise ParamError("order_by", f"order_by must be time or -time, got {order[:40]!r}")
    names: tuple[str, ...] | None = None
    if "events" in params:
        raw = params["events"]
        items = [n.strip() for n in raw.split(",")] if raw else []
        if len(items) > MAX_EVENT_NAMES:
            raise ParamError("events", f"events lists more than {MAX_EVENT_NAMES} names")
        for item in items:
            if not EVENT_NAME_RE.match(item):
                raise ParamError("events", f"events: not an event name: {item[:40]!r}")
        names = tuple(dict.fromkeys(items))
    start = _time_param(params, "start")
    end = _time_param(params, "end")
    if start is not None and end is not None and start > end:
        raise ParamError("end", "end is before start")
    camid = params.get("camid")
    if camid is not None and not 0 < len(camid) <= _CAMID_MAX:
        raise ParamError("camid", f"camid must be 1-{_CAMID_MAX} characters")
    include_meta = parse_bool("include_meta", params.get("include_meta", "false"))
    if "include_filemeta_download" in params:
        parse_bool("include_filemeta_download", params["include_filemeta_download"])
    max_id = None
    if "max_id" in params:
        max_id = _int_param(params, "max_id", 0, 0, 2**62)
    return EventQuery(limit, offset, order == "-time", names, start, end, camid, include_meta,
                      max_id)


def _time_param(params: Mapping[str, str], name: str) -> str | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        return log_time(parse_time(text))
    except ValueError as exc:
        raise ParamError(name, f"{name}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Times


def parse_time(text: Any) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; no zone means UTC (protocols.md §2.3).

    Accepts ``2021-09-23T16:30:00`` (VXG's form), with fractions of a second, with ``Z`` or an
    offset, or a bare date. Raises ValueError with a message fit for a client.
    """
    if not isinstance(text, str) or not 0 < len(text) <= 40:
        raise ValueError(f"expected an ISO 8601 time such as 2021-09-23T16:30:00, got {text!r:.60}")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expected an ISO 8601 time such as 2021-09-23T16:30:00, got {text!r}"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value


def log_time(value: datetime) -> str:
    """The event log's time text, ``YYYY-MM-DDTHH:MM:SS.mmmZ``: the bus's own form, so text
    order is time order in SQL."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_time(log_text: str) -> str:
    """The time as the API shows it: UTC without a zone suffix, as VXG does (its web client
    appends the ``Z`` itself, protocols.md §2.3), with milliseconds."""
    return log_text[:-1] if log_text.endswith("Z") else log_text


# --------------------------------------------------------------------------------------------
# Paging envelope


def page_links(
    path: str, params: Mapping[str, str], *, limit: int, offset: int, total: int,
    pin: Mapping[str, str] | None = None,
) -> tuple[str | None, str | None]:
    """``(next, previous)`` URLs (path and query, as Tastypie gives them) or ``None``.

    The client's own parameters are kept (its filters, its ``token`` if it authenticated that
    way), ``offset`` moves by ``limit`` and ``limit`` is made explicit; ``pin`` adds parameters
    that keep the result set fixed while paging (``max_id``). With ``limit`` 0 there is no next
    page (it would never advance).
    """
    base = {k: v for k, v in params.items() if k not in ("offset", "limit")}
    if pin:
        base.update(pin)

    def link(new_offset: int) -> str:
        query = urlencode({**base, "limit": str(limit), "offset": str(new_offset)})
        return f"{path}?{query}"

    nxt = link(offset + limit) if limit and offset + limit < total else None
    prev = link(max(0, offset - limit)) if offset > 0 and limit else None
    return nxt, prev


def envelope(objects: Sequence[Any], *, limit: int, offset: int, total: int,
             next_url: str | None, previous_url: str | None) -> dict[str, Any]:
    """The paged list body of protocols.md §2.2/§2.5."""
    return {
        "meta": {
            "limit": limit,
            "next": next_url,
            "offset": offset,
            "previous": previous_url,
            "total_count": total,
        },
        "objects": list(objects),
    }


# --------------------------------------------------------------------------------------------
# JSON bodies


def _object(body: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise BodyError(None, f"{what} must be a JSON object, got {type(body).__name__}")
    return body


def _known_fields(body: Mapping[str, Any], known: Iterable[str]) -> None:
    known = tuple(known)
    for key in body:
        if key not in known:
            raise BodyError(key, f"unknown field {str(key)[:40]!r}; known: {', '.join(known)}")


def _bool_field(body: Mapping[str, Any], name: str) -> bool | None:
    if name not in body:
        return None
    value = body[name]
    if not isinstance(value, bool):
        raise BodyError(name, f"{name} must be true or false, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _camid(value: Any) -> str:
    """A camera id: a stream id string; an integer (VXG ids are numbers) is taken as its text."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= _CAMID_MAX:
        raise BodyError("camid", f"camid must be a camera id (1-{_CAMID_MAX} characters), "
                                 f"got {_kind(value)}")
    return value


def _meta(value: Any) -> dict[str, str]:
    """VXG meta: an object of string tags (protocols.md §2.3), bounded in size."""
    if not isinstance(value, dict):
        raise BodyError("meta", f"meta must be an object of strings, got {_kind(value)}")
    if len(value) > _META_MAX_KEYS:
        raise BodyError("meta", f"meta has more than {_META_MAX_KEYS} tags")
    for key, item in value.items():
        if not isinstance(item, str):
            raise BodyError(f"meta.{key}", f"meta.{key} must be a string, got {_kind(item)}")
        if len(key) > _META_MAX_TEXT or len(item) > _META_MAX_TEXT:
            raise BodyError(f"meta.{key}", f"meta tags are limited to {_META_MAX_TEXT} characters")
    return dict(value)


def _time_field(body: Mapping[str, Any]) -> str | None:
    if "time" not in body or body["time"] is None:
        return None
    try:
        return log_time(parse_time(body["time"]))
    except ValueError as exc:
        raise BodyError("time", f"time: {exc}") from None


def _event_name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not EVENT_NAME_RE.match(value):
        got = repr(value[:40]) if isinstance(value, str) else _kind(value)
        raise BodyError(field, f"{field} must be an event name (1-64 letters, digits, '_', '.', "
                               f"':' or '-', starting with a letter, digit or '_'), got {got}")
    return value


@dataclass(frozen=True)
class EventCreate:
    """``POST /api/v2/storage/events/``: ``time`` in log form, or None for "now"."""

    camid: str
    name: str
    time: str | None
    meta: dict[str, str]


def parse_event_create(body: Any) -> EventCreate:
    body = _object(body, "the event")
    _known_fields(body, ("camid", "name", "time", "meta"))
    if "camid" not in body:
        raise BodyError("camid", "camid is required")
    if "name" not in body:
        raise BodyError("name", "name is required")
    camid = _camid(body["camid"])
    name = _event_name(body["name"])
    meta = _meta(body["meta"]) if body.get("meta") is not None else {}
    return EventCreate(camid, name, _time_field(body), meta)


@dataclass(frozen=True)
class Trigger:
    time: str | None
    meta: dict[str, str]


def parse_trigger(body: Any) -> Trigger:
    """``POST …/trigger/`` body ``{time, meta}``, both optional; an empty body is ``{}``."""
    body = {} if body is None else _object(body, "the trigger")
    _known_fields(body, ("time", "meta"))
    meta = _meta(body["meta"]) if body.get("meta") is not None else {}
    return Trigger(_time_field(body), meta)


_CAP_NAMES = ("can_be_triggered", "can_record", "can_snapshot", "is_periodic")


@dataclass(frozen=True)
class TypeCreate:
    name: str
    notify: bool
    receive: bool
    generate_images: bool
    can_be_triggered: bool


def parse_type_create(body: Any) -> TypeCreate:
    """``POST …/event_processing/events/``: a custom type (protocols.md §2.2).

    Only ``can_be_triggered`` of the caps can be asked for: the hub neither records, snapshots
    nor repeats custom events, and saying so (400) beats reporting a cap that does nothing.
    """
    body = _object(body, "the event type")
    _known_fields(body, ("name", "notify", "receive", "generate_images", "caps", "custom"))
    if "name" not in body:
        raise BodyError("name", "name is required")
    name = _event_name(body["name"])
    custom = _bool_field(body, "custom")
    if custom is False:
        raise BodyError("custom", "a created event type is always custom")
    trig = False
    if "caps" in body:
        caps = body["caps"]
        if not isinstance(caps, dict):
            raise BodyError("caps", f"caps must be an object, got {_kind(caps)}")
        for key, value in caps.items():
            if key not in _CAP_NAMES:
                raise BodyError(f"caps.{key}", f"caps: unknown cap {str(key)[:40]!r}")
            if not isinstance(value, bool):
                raise BodyError(f"caps.{key}", f"caps.{key} must be true or false")
            if value and key != "can_be_triggered":
                raise BodyError(f"caps.{key}", f"caps.{key}: this hub cannot give custom events "
                                                 f"this cap")
        trig = bool(caps.get("can_be_triggered", False))
    return TypeCreate(
        name,
        notify=bool(_bool_field(body, "notify")),
        receive=bool(_bool_field(body, "receive")),  # VXG: a new custom type has receive false
        generate_images=bool(_bool_field(body, "generate_images")),
        can_be_triggered=trig,
    )


@dataclass(frozen=True)
class TypeUpdate:
    """The settings a PUT changes; None = unchanged."""

    notify: bool | None = None
    receive: bool | None = None
    generate_images: bool | None = None


def parse_type_update(body: Any, name: str) -> TypeUpdate:
    """``PUT …/event_processing/events/{name}/``.

    ``name`` may be repeated (the web client sends it) but not changed. ``record``, ``snapshot``
    and ``period`` exist only with the caps ``can_record``/``can_snapshot``/``is_periodic``,
    which no type of this hub has, so ``true``/a period is refused and ``false``/0 accepted.
    ``caps`` and ``custom`` are echoed by clients that PUT back a GET; they must match.
    """
    body = _object(body, "the event type")
    _known_fields(body, ("name", "notify", "receive", "generate_images", "record", "snapshot",
                         "period", "caps", "custom"))
    if "name" in body and body["name"] != name:
        raise BodyError("name", "name: an event type cannot be renamed")
    for key in ("record", "snapshot"):
        value = _bool_field(body, key)
        if value:
            raise BodyError(key, f"{key} needs caps.can_{key}, which this event type lacks")
    if "period" in body:
        period = body["period"]
        if not isinstance(period, int) or isinstance(period, bool) or period != 0:
            raise BodyError("period", "period needs caps.is_periodic, which this event type lacks")
    return TypeUpdate(_bool_field(body, "notify"), _bool_field(body, "receive"),
                      _bool_field(body, "generate_images"))
