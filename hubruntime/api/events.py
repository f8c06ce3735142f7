"""Event types, event creation, triggering and listing: the VXG v2 event-processing API.

Shapes from protocols.md §2: event types per camera with caps under
``/api/v2/cameras/{CAMID}/event_processing/events/`` (§2.2), events created with
``POST /api/v2/storage/events/`` (§2.3), triggers (§2.4) and the paged listing (§2.5).

What the hub's types are. A camera (a registered stream) has the **built-in** types: the hub
events of the catalogue that concern one stream (``camera_packet_delay`` …; hub-wide events such
as ``hub_connected_to_local_network`` belong to no camera) and the camera notifications
(catalogue origin "camera"); plus the **custom** types created through this API, kept in SQLite.
No type records, snapshots or repeats (the caps are false), and a type can be triggered when
the hub has a trigger for its name (``triggers``), or when it is custom and was created with
``caps.can_be_triggered`` (triggering it publishes an event of that type for that camera).

What a client may publish. Events created here go on the bus like any other (Lua plugins get
them, the event log keeps them) as camera-side notifications with ``source: "api"`` and the
client's ``time`` and ``meta`` (DESIGN §6). The name must be a camera notification of the
catalogue or a custom type of that camera: a hub event name is refused, because a client must
not be able to pose as the hub (a fake ``camera_unreachable`` would mislead every plugin).

Scoped tokens (``ApiToken.camera``): another camera's resources answer 403 whether the camera
exists or not (so a scoped token cannot probe for camera ids), and listings only ever show the
token's camera. protocols.md names only 401 and 404 (§2.6); 403 is ours, with the usual body.
"""

from __future__ import annotations

import inspect
import logging
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

import trio

from hubruntime.api.app import HttpError, Request, Response, Route, forbidden
from hubruntime.events import catalogue
from hubruntime.events.bus import EventBus
from hubruntime.proto.api import (
    BodyError,
    envelope,
    format_time,
    page_links,
    parse_bool,
    parse_event_create,
    parse_event_query,
    parse_paging,
    parse_trigger,
    parse_type_create,
    parse_type_update,
)
from hubruntime.store import (
    DuplicateEventTypeError,
    EventTypeRecord,
    Store,
    StreamRecord,
)
from hubruntime.streams.manager import StreamManager

log = logging.getLogger("hubruntime.api")

#: ``triggers[name](stream_id, name, time, meta)``: what triggering event type ``name`` does.
#: ``time`` is the requested time (ISO text, UTC, ``…Z``) or None, ``meta`` the string tags. It
#: may be a plain or an async function; a dict it returns is the response's ``result``. A
#: ValueError is the client's fault (400, its message shown); any other exception is a 502.
TriggerFn = Callable[[str, str, str | None, dict[str, str]], Any]

#: Worker threads for the API's SQLite calls (the store serialises them on one lock anyway).
API_DB_THREADS = 2

#: How long a trigger may take before the client gets 504 (the trigger goes on being cancelled).
TRIGGER_TIMEOUT_SECS = 10.0

_CAPS_FALSE = {"can_record": False, "can_snapshot": False, "is_periodic": False}


def _builtin_types() -> dict[str, dict[str, Any]]:
    """name → ``catalogue.describe()`` entry, for the types every camera has."""
    out: dict[str, dict[str, Any]] = {}
    for entry in catalogue.describe():
        etype = catalogue.CATALOGUE[entry["name"]]
        if etype.origin == "camera" or etype.stream_scoped:
            out[entry["name"]] = entry
    return out


def _payload_meta(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``meta`` of a logged event: the client's tags for an API event, else the event's own
    fields (all but ``event`` and ``streamId``, which are the name and camid already)."""
    if payload.get("source") == "api":
        meta = payload.get("meta")
        return dict(meta) if isinstance(meta, dict) else {}
    return {k: v for k, v in payload.items() if k not in ("event", "streamId")}


def event_object(row: Mapping[str, Any], include_meta: bool) -> dict[str, Any]:
    """A logged event as the API shows it: ``id`` (the bus seq), ``camid``, ``name``, ``time``
    and, when asked for, ``meta`` (VXG's field names, protocols.md §2.5)."""
    obj: dict[str, Any] = {
        "id": row["seq"],
        "camid": row["stream_id"],
        "name": row["name"],
        "time": format_time(row["event_time"]),
    }
    if include_meta:
        obj["meta"] = _payload_meta(row["payload"])
    return obj


class EventsApi:
    """The handlers; ``triggers`` maps event names to :data:`TriggerFn`."""

    def __init__(self, store: Store, bus: EventBus, manager: StreamManager,
                 triggers: Mapping[str, TriggerFn] | None = None) -> None:
        self.store = store
        self.bus = bus
        self.manager = manager
        self.triggers = dict(triggers or {})
        self.builtin = _builtin_types()
        # API store calls get their own few threads: a flood of listings then queues here,
        # not in trio's default thread pool, which the event log writer and plugin storage use.
        self._limiter = trio.CapacityLimiter(API_DB_THREADS)

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def routes(self) -> list[Route]:
        base = "/api/v2/cameras/{camid}/event_processing/events"
        return [
            Route(base, {"GET": self.list_types, "POST": self.create_type},
                  query=("limit", "offset")),
            Route(base + "/{event}/trigger", {"POST": self.trigger}),
            Route(base + "/{event}", {"GET": self.get_type, "PUT": self.put_type}),
            Route("/api/v2/storage/events", {"GET": self.list_events, "POST": self.create_event},
                  query=None),
            Route("/api/v2/storage/events/{id}", {"GET": self.get_event},
                  query=("include_meta",)),
        ]

    # -- cameras and types -----------------------------------------------------------------

    async def _camera(self, request: Request, camid: str) -> StreamRecord:
        """The stream ``camid``: 403 outside the token's scope (checked first, see module
        doc), 404 if there is no such stream."""
        scope = request.camera_scope
        if scope and camid != scope:
            raise forbidden(f"this token is limited to camera {scope!r}")
        rec = await self.manager.get(camid)
        if rec is None:
            raise HttpError(404, f"no camera {camid!r}", param="camid")
        return rec

    def _type_object(self, name: str, rec: EventTypeRecord | None) -> dict[str, Any]:
        """The VXG event-type object (protocols.md §2.2). ``record``/``snapshot``/``period``
        are absent because the caps that would allow them are false. ``origin``, ``doc`` and
        ``fields`` are ours (the catalogue's declaration)."""
        builtin = self.builtin.get(name)
        custom = builtin is None
        triggerable = name in self.triggers or (custom and rec is not None
                                                and rec.can_be_triggered)
        obj: dict[str, Any] = {
            "name": name,
            "caps": {"can_be_triggered": triggerable, **_CAPS_FALSE},
            "notify": rec.notify if rec else False,
            "receive": rec.receive if rec else True,
            "generate_images": rec.generate_images if rec else False,
            "custom": custom,
        }
        if builtin is not None:
            obj["origin"] = builtin["origin"]
            obj["doc"] = builtin["doc"]
            obj["fields"] = builtin["fields"]
        else:
            obj["origin"] = "custom"
        return obj

    async def _type_record(self, camid: str, name: str) -> EventTypeRecord | None:
        """The stored row of a type, 404 when ``name`` is no type of this camera."""
        rec = await self._db(self.store.get_event_type, camid, name)
        if name not in self.builtin and (rec is None or not rec.custom):
            raise HttpError(404, f"camera {camid!r} has no event type {name!r}", param="event")
        return rec

    async def list_types(self, request: Request) -> Response:
        camid = request.params["camid"]
        paging = parse_paging(request.query, extra=("token",))
        await self._camera(request, camid)
        rows = await self._db(self.store.list_event_types, camid)
        stored = {r.name: r for r in rows}
        names = list(self.builtin) + [r.name for r in rows if r.custom and
                                       r.name not in self.builtin]
        total = len(names)
        page = names[paging.offset:paging.offset + paging.limit]
        nxt, prev = page_links(request.path, request.query, limit=paging.limit,
                               offset=paging.offset, total=total)
        objects = [self._type_object(n, stored.get(n)) for n in page]
        return Response(envelope(objects, limit=paging.limit, offset=paging.offset, total=total,
                                 next_url=nxt, previous_url=prev))

    async def create_type(self, request: Request) -> Response:
        camid = request.params["camid"]
        await self._camera(request, camid)
        spec = parse_type_create(await request.json())
        if spec.name in self.builtin or spec.name in catalogue.CATALOGUE:
            raise HttpError(409, f"{spec.name!r} is an event of the hub's catalogue",
                            param="name")
        rec = EventTypeRecord(camid, spec.name, True, spec.notify, spec.receive,
                              spec.generate_images, spec.can_be_triggered)
        try:
            rec = await self._db(self.store.add_event_type, rec)
        except DuplicateEventTypeError:
            raise HttpError(409, f"camera {camid!r} already has event type {spec.name!r}",
                            param="name") from None
        except sqlite3.IntegrityError:  # the stream was removed meanwhile
            raise HttpError(404, f"no camera {camid!r}", param="camid") from None
        log.info("camera %s: custom event type %s created", camid, spec.name)
        return Response(self._type_object(spec.name, rec), 201)

    async def get_type(self, request: Request) -> Response:
        camid, name = request.params["camid"], request.params["event"]
        await self._camera(request, camid)
        rec = await self._type_record(camid, name)
        return Response(self._type_object(name, rec))

    async def put_type(self, request: Request) -> Response:
        camid, name = request.params["camid"], request.params["event"]
        await self._camera(request, camid)
        rec = await self._type_record(camid, name)
        body = await request.json()
        update = parse_type_update(body, name)
        current = self._type_object(name, rec)
        for key in ("caps", "custom"):
            if key in body and body[key] != current[key]:
                raise BodyError(key, f"{key} cannot be changed")
        new = EventTypeRecord(
            camid, name, name not in self.builtin,
            notify=current["notify"] if update.notify is None else update.notify,
            receive=current["receive"] if update.receive is None else update.receive,
            generate_images=(current["generate_images"] if update.generate_images is None
                             else update.generate_images),
            can_be_triggered=bool(rec and rec.can_be_triggered),
            created_at=rec.created_at if rec else 0.0,
        )
        try:
            saved = await self._db(self.store.save_event_type, new)
        except sqlite3.IntegrityError:
            raise HttpError(404, f"no camera {camid!r}", param="camid") from None
        return Response(self._type_object(name, saved))

    # -- triggering ------------------------------------------------------------------------

    async def trigger(self, request: Request) -> Response:
        camid, name = request.params["camid"], request.params["event"]
        await self._camera(request, camid)
        rec = await self._type_record(camid, name)
        spec = parse_trigger(await request.json(required=False))
        fn = self.triggers.get(name)
        if fn is not None:
            result = await self._run_trigger(fn, camid, name, spec.time, spec.meta)
            body: dict[str, Any] = {"camid": camid, "name": name, "triggered": True}
            if spec.time is not None:
                body["time"] = format_time(spec.time)
            if isinstance(result, dict):
                body["result"] = result
            return Response(body)
        if rec is not None and rec.custom and rec.can_be_triggered:
            obj = self._publish(camid, name, spec.time, spec.meta)
            return Response({**obj, "triggered": True})
        raise HttpError(400, f"event type {name!r} of camera {camid!r} cannot be triggered "
                             "(caps.can_be_triggered is false)", param="event")

    async def _run_trigger(self, fn: TriggerFn, camid: str, name: str, when: str | None,
                           meta: dict[str, str]) -> Any:
        try:
            with trio.fail_after(TRIGGER_TIMEOUT_SECS):
                result = fn(camid, name, when, dict(meta))
                if inspect.isawaitable(result):
                    result = await result
        except trio.TooSlowError:
            raise HttpError(504, f"trigger {name!r} did not finish in "
                                 f"{TRIGGER_TIMEOUT_SECS:.0f} s") from None
        except ValueError as exc:
            raise HttpError(400, f"trigger {name!r} refused: {exc}") from None
        except Exception as exc:
            log.exception("trigger %s for camera %s failed", name, camid)
            raise HttpError(502, f"trigger {name!r} failed: {type(exc).__name__}") from None
        return result

    # -- events ----------------------------------------------------------------------------

    def _publish(self, camid: str, name: str, when: str | None,
                 meta: dict[str, str]) -> dict[str, Any]:
        """Publish an API event on the bus; its representation, ``id`` = the bus seq."""
        payload: dict[str, Any] = {"meta": meta}
        if when is not None:
            payload["time"] = when
        try:
            event = catalogue.from_notification("api", name, payload, stream_id=camid)
            published = self.bus.publish_event(event)
        except catalogue.EventValidationError as exc:
            raise BodyError(exc.field or "name", str(exc)) from None
        return {"id": published.seq, "camid": camid, "name": name,
                "time": format_time(when or published.time), "meta": meta}

    async def create_event(self, request: Request) -> Response:
        if request.query.keys() - {"token"}:
            key = next(iter(request.query.keys() - {"token"}))
            raise HttpError(400, f"unknown query parameter {key[:40]!r}", param=key)
        spec = parse_event_create(await request.json())
        await self._camera(request, spec.camid)
        etype = catalogue.CATALOGUE.get(spec.name)
        if etype is not None and etype.origin == "hub":
            raise BodyError("name", f"name: {spec.name!r} is a hub event; only the hub "
                                    "publishes it")
        if etype is None:
            rec = await self._db(self.store.get_event_type, spec.camid,
                                                spec.name)
            if rec is None or not rec.custom:
                raise BodyError("name", f"name: camera {spec.camid!r} has no event type "
                                        f"{spec.name!r}; create it first")
        obj = self._publish(spec.camid, spec.name, spec.time, spec.meta)
        return Response(obj, 201)

    async def list_events(self, request: Request) -> Response:
        q = parse_event_query(request.query)
        scope = request.camera_scope
        camid = q.camid
        if scope:
            if camid is not None and camid != scope:
                raise forbidden(f"this token is limited to camera {scope!r}")
            camid = scope
        total, rows, last = await self._db(
            lambda: self.store.query_events(
                names=q.names, stream_id=camid, start=q.start, end=q.end, max_seq=q.max_id,
                newest_first=q.newest_first, offset=q.offset, limit=q.limit))
        pin = {"max_id": str(q.max_id if q.max_id is not None else last)}
        nxt, prev = page_links(request.path, request.query, limit=q.limit, offset=q.offset,
                               total=total, pin=pin)
        objects = [event_object(r, q.include_meta) for r in rows]
        return Response(envelope(objects, limit=q.limit, offset=q.offset, total=total,
                                 next_url=nxt, previous_url=prev))

    async def get_event(self, request: Request) -> Response:
        raw = request.params["id"]
        if not raw.isdigit() or len(raw) > 18:
            raise HttpError(404, f"no event {raw[:40]!r}", param="id")
        include_meta = False
        if "include_meta" in request.query:
            include_meta = parse_bool("include_meta", request.query["include_meta"])
        row = await self._db(self.store.get_event, int(raw))
        if row is None:
            raise HttpError(404, f"no event {raw} (never logged, or pruned)", param="id")
        scope = request.camera_scope
        if scope and row["stream_id"] != scope:
            raise forbidden(f"this token is limited to camera {scope!r}")
        return Response(event_object(row, include_meta))

