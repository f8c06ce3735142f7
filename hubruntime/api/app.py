"""A small hand-written ASGI application: routing, token auth, bounded JSON bodies, JSON errors.

Why no web framework: the API is a dozen routes with exact, protocol-given error bodies (VXG's
``errorDetail``/``status`` on ``/api``, OSC's ``{name, state, error}`` on ``/osc``), and the
hard parts (a body limit that never reads past 1 MiB, long-polls that notice a client leaving,
nothing a client sends reaching a traceback) are easier to get exactly right in a few hundred
lines we own than by bending a framework's defaults. Hypercorn (trio worker) does HTTP/1.1 itself.

Every request is authenticated first (``Authorization: Acc <token>``, or ``?token=`` as VXG
allows, protocols.md §2.1), then routed (404, 405), then handled. Every answer, error or not,
is JSON with ``Content-Type: application/json; charset=utf-8`` and ``X-Content-Type-Options:
nosniff`` (what OSC asks of every response, protocols.md §1.1; harmless elsewhere).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from hubruntime.config import ApiToken
from hubruntime.proto import osc
from hubruntime.proto.api import BodyError, ParamError, parse_query

log = logging.getLogger("hubruntime.api")

#: Largest request body read (bytes); a bigger one is answered 413 without being read.
MAX_BODY = 1024 * 1024
#: How long a client may take to send its body before it is answered 408 (slow-loris guard).
BODY_TIMEOUT_SECS = 30.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_BASE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"application/json; charset=utf-8"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
)


class ClientGone(Exception):
    """The client disconnected before the request was complete; nothing is answered."""


class HttpError(Exception):
    """An error answer. ``param`` names the bad parameter or field (VXG bodies carry it);
    ``code`` is the OSC error code used when the route is an OSC one."""

    def __init__(self, status: int, detail: str, *, param: str | None = None,
                 code: str | None = None, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.param = param
        self.code = code
        self.headers = tuple(headers)


@dataclass
class Response:
    body: Any
    status: int = 200
    headers: Sequence[tuple[bytes, bytes]] = ()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


@dataclass
class Request:
    """One HTTP request as handlers see it. The body is read only when asked for."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    token: ApiToken | None = None
    _receive: Receive | None = None
    _body_read: bool = False

    @property
    def camera_scope(self) -> str:
        """The one camera this request's token may see, or "" for all."""
        return self.token.camera if self.token is not None else ""

    async def body(self) -> bytes:
        """The whole body, at most :data:`MAX_BODY` bytes: 413 as soon as it would be more
        (from Content-Length before reading anything, else while reading), 408 if it trickles
        in for longer than :data:`BODY_TIMEOUT_SECS`."""
        if self._body_read or self._receive is None:
            return b""
        self._body_read = True
        length = self.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HttpError(400, "Content-Length is not a number", param="Content-Length")
            if int(length) > MAX_BODY:
                raise HttpError(413, f"request body larger than {MAX_BODY} bytes",
                                headers=((b"connection", b"close"),))
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(BODY_TIMEOUT_SECS) as timer:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY:
                    raise HttpError(413, f"request body larger than {MAX_BODY} bytes",
                                    headers=((b"connection", b"close"),))
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if timer.cancelled_caught:
            raise HttpError(408, "request body not received in time",
                            headers=((b"connection", b"close"),))
        return b"".join(chunks)

    async def json(self, *, required: bool = True) -> Any:
        """The body parsed as strict JSON (no NaN/Infinity); ``None`` for an empty body when
        not ``required``. Malformed, non-UTF-8 or absurdly nested JSON is a 400."""
        raw = await self.body()
        if not raw.strip():
            if required:
                raise HttpError(400, "a JSON body is required")
            return None
        try:
            return json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
        except RecursionError:
            raise HttpError(400, "the body is not valid JSON: nested too deeply") from None

    async def wait_disconnect(self) -> None:
        """Return when the client goes away (for long-polls, once the body has been read)."""
        if self._receive is None:
            await trio.sleep_forever()
        assert self._receive is not None
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """A path pattern (``{name}`` segments match one path segment) with its handlers.

    ``family`` picks the error body: "vxg" (``/api``) or "osc" (``/osc``). ``osc_name`` is the
    OSC ``name`` of the endpoint for its error bodies. ``query`` lists the query parameters the
    route takes besides ``token``; any other is a 400 (handlers that validate their own query
    pass ``None``).
    """

    pattern: str
    methods: dict[str, Handler]
    family: str = "vxg"
    osc_name: str = ""
    query: tuple[str, ...] | None = ()
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = []
        for segment in self.pattern.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
            else:
                parts.append(re.escape(segment))
        # A trailing slash is optional: VXG paths end in '/', clients often drop it.
        object.__setattr__(self, "regex", re.compile("^/" + "/".join(parts) + "/?$"))


class ApiApp:
    """The ASGI callable. ``tokens`` are the accepted tokens; ``routes`` are tried in order."""

    def __init__(self, tokens: Iterable[ApiToken], routes: Sequence[Route]) -> None:
        self.tokens = tuple(tokens)
        self.routes = list(routes)
        self.requests = 0
        self.errors_500 = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return  # websockets are not offered; hypercorn closes the connection
        await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- one request -----------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.requests += 1
        path: str = scope.get("path", "/")
        family = "osc" if path.startswith("/osc/") or path == "/osc" else "vxg"
        osc_name = _osc_name_of(path)
        headers = {}
        for raw_name, raw_value in scope.get("headers", ()):
            headers[raw_name.decode("latin-1").lower()] = raw_value.decode("latin-1")
        request = Request(scope.get("method", "GET").upper(), path, {}, headers,
                          _receive=receive)
        try:
            try:
                request.query = parse_query(scope.get("query_string", b""))
            except ParamError as exc:
                raise HttpError(400, str(exc), param=exc.param,
                                code=osc.INVALID_PARAMETER_NAME) from None
            request.token = self._authenticate(request)
            route, params = self._match(path)
            if route is None:
                if family == "osc":
                    raise HttpError(400, f"{path} is not an OSC command of this hub",
                                    code=osc.UNKNOWN_COMMAND)
                raise HttpError(404, f"no such resource: {path}")
            family, osc_name = route.family, route.osc_name or osc_name
            handler = route.methods.get(request.method)
            if handler is None:
                allowed = ", ".join(sorted(route.methods))
                raise HttpError(405, f"{request.method} is not allowed here; use {allowed}",
                                code=osc.UNKNOWN_COMMAND,
                                headers=((b"allow", allowed.encode()),))
            if route.query is not None:
                known = ("token", *route.query)
                for key in request.query:
                    if key not in known:
                        raise HttpError(400, f"unknown query parameter {key[:40]!r}", param=key,
                                        code=osc.INVALID_PARAMETER_NAME)
            request.params = params
            response = await handler(request)
            payload = encode_json(response.body)  # here, so a bad value is a 500 like any bug
        except ClientGone:
            return
        except HttpError as exc:
            response = self._error_response(exc, family, osc_name)
            payload = encode_json(response.body)
        except (ParamError, BodyError) as exc:
            response = self._error_response(
                HttpError(400, str(exc), param=exc.param, code=osc.INVALID_PARAMETER_VALUE),
                family, osc_name)
            payload = encode_json(response.body)
        except Exception:
            # Never a traceback to the client, never a dead server: log it and answer 500.
            self.errors_500 += 1
            log.exception("HTTP API: %s %s failed", request.method, path)
            response = self._error_response(
                HttpError(500, "internal error", code=osc.SERVER_ERROR), family, osc_name)
            payload = encode_json(response.body)
        await _send_response(send, response, payload)

    def _authenticate(self, request: Request) -> ApiToken:
        """The token of the request, or 401. Compared in constant time against every
        configured token, so a wrong token takes as long as a right one."""
        given: str | None = None
        auth = request.headers.get("authorization")
        if auth is not None:
            scheme, _, value = auth.strip().partition(" ")
            if scheme.lower() != "acc" or not value.strip():
                raise _unauthorized("the Authorization header must be 'Acc <token>'")
            given = value.strip()
        elif "token" in request.query:
            given = request.query["token"]
        if not given:
            raise _unauthorized("authentication required: Authorization: Acc <token>")
        found: ApiToken | None = None
        given_bytes = given.encode("utf-8", "surrogateescape")
        for token in self.tokens:
            if hmac.compare_digest(given_bytes, token.token.encode("utf-8")):
                found = token
        if found is None:
            raise _unauthorized("unknown token")
        return found

    def _match(self, path: str) -> tuple[Route | None, dict[str, str]]:
        for route in self.routes:
            m = route.regex.match(path)
            if m is not None:
                return route, m.groupdict()
        return None, {}

    @staticmethod
    def _error_response(exc: HttpError, family: str, osc_name: str) -> Response:
        if family == "osc":
            code = exc.code or (osc.SERVER_ERROR if exc.status >= 500
                                else osc.INVALID_PARAMETER_VALUE)
            body: dict[str, Any] = osc.error_body(osc_name, code, exc.detail)
        else:
            body = {"status": exc.status, "errorDetail": exc.detail}
            if exc.param is not None:
                body["param"] = exc.param
        return Response(body, exc.status, exc.headers)


def _unauthorized(detail: str) -> HttpError:
    return HttpError(401, detail, code="unauthorized",
                     headers=((b"www-authenticate", b'Acc realm="hubruntime"'),))


def forbidden(detail: str) -> HttpError:
    return HttpError(403, detail, code="forbidden")


def _osc_name_of(path: str) -> str:
    """The OSC ``name`` of an error body for ``path`` (protocols.md §1.7): ``camera.`` plus
    the endpoint with dots, e.g. ``/osc/commands/status`` → ``camera.commands.status``."""
    rest = path[len("/osc/"):].strip("/") if path.startswith("/osc/") else ""
    rest = re.sub(r"[^A-Za-z0-9_./]", "", rest)[:60]
    return "camera." + rest.replace("/", ".") if rest else "camera"


async def _send_response(send: Send, response: Response, body: bytes) -> None:
    headers = [*_BASE_HEADERS, (b"content-length", str(len(body)).encode()),
               *response.headers]
    try:
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
            trio.BusyResourceError):
        # The client left while we answered: nothing to do. (BusyResourceError: hypercorn
        # closing the connection under us, e.g. a client that sent another request after
        # its keep-alive limit's "Connection: close"; the connection is going away.)
        pass
