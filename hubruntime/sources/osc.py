"""Follow an OSC camera's state by long-polling ``/osc/checkForUpdates`` (protocols.md §1).

One :class:`OscClient` per ``[[osc]]`` source: ``GET /osc/info`` (logged), ``POST /osc/state``
(the baseline), then ``POST /osc/checkForUpdates`` with the held fingerprint, again and again.
When the fingerprint moves it fetches ``/osc/state``, diffs it against the previous one and
publishes ``osc_state_changed``. *When* to ask is decided by the sans-I/O
:class:`~hubruntime.proto.osc.PollScheduler` (camera throttle honoured, our own minimum interval
between polls, backoff on errors); this module only does the HTTP and the publishing.

Decisions worth knowing:

* No event for the first state fetched: there is nothing to compare it with, and plugins asking
  for the current state is a different feature. After an outage, the state is fetched again and
  compared with the last one seen, so a change that happened while the camera was unreachable is
  still reported (once, coalesced).
* A fingerprint that moved while no state value differs (a counter-style fingerprint that a
  camera bumps for something it does not report, or a change undone before we looked) gives no
  event: the event lists what changed, and an empty list would be noise to every plugin. The new
  fingerprint is kept, and the case counted in :attr:`OscClient.unchanged_fingerprints`.
* A removed state key is in ``changed`` with a JSON null in ``state``; in Lua (where a table
  cannot hold nil) it is listed in ``params.changed`` and absent from ``params.state``.
* ``/osc/info``'s ``httpUpdatesPort`` is not followed: every camera seen sets it to ``httpPort``
  (§1.2), and behind a port forward the advertised port would be wrong where the configured URL
  is right.
* Credentials in the configured URL (``http://user:pass@cam``) are sent as Digest when the camera
  asks for Digest (THETA in client mode does), as Basic when it asks for Basic, and never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

import httpx
import trio

from hubruntime import config
from hubruntime.events import catalogue
from hubruntime.events.bus import EventBus
from hubruntime.proto.backoff import Backoff
from hubruntime.proto.osc import (
    REQUEST_HEADERS,
    DelayPolicy,
    OscErrorReply,
    OscInfo,
    OscProtocolError,
    PollScheduler,
    Step,
    check_for_updates_body,
    decode_reply,
    diff_state,
    encode,
    parse_info,
    parse_state,
    parse_update,
)
from hubruntime.redact import redact

log = logging.getLogger("hubruntime.sources")

MAX_BODY = 1 << 20
"""Largest answer read from a camera: a state document is a few hundred bytes; a camera (or
something else on its address) streaming without end must not fill the hub's memory."""

REPEAT_LOG_SECS = 300.0
"""How often a failure that keeps happening for the same reason is logged again."""

_FAILURES = (httpx.HTTPError, httpx.StreamError, OscErrorReply, OscProtocolError)
_JSON_TYPE = {"Content-Type": "application/json; charset=utf-8"}


class _CameraAuth(httpx.Auth):
    """Digest when the camera's 401 offers Digest, else Basic when it offers Basic.

    httpx has each on its own, but which one a camera wants is only known from its challenge;
    Basic is never sent before a challenge asks for it (it would expose the password to a
    camera that needs none, over plain HTTP).
    """

    def __init__(self, user: str, password: str) -> None:
        self._digest = httpx.DigestAuth(user, password)
        self._basic = httpx.BasicAuth(user, password)
        self._use_basic = False

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._use_basic:
            yield from self._basic.auth_flow(request)
            return
        flow = self._digest.auth_flow(request)
        outgoing = next(flow)
        while True:
            response = yield outgoing
            try:
                outgoing = flow.send(response)
            except StopIteration:
                break
        offers = [h.lower() for h in response.headers.get_list("www-authenticate")]
        if response.status_code == 401 and any(h.startswith("basic") for h in offers) \
                and not any(h.startswith("digest") for h in offers):
            self._use_basic = True
            yield from self._basic.auth_flow(request)


class OscClient:
    """Follows one OSC camera and publishes ``osc_state_changed`` on the bus.

    ``wait_timeout`` is the hold asked of the camera (seconds, sent as an integer);
    ``min_interval`` our floor between two polls; ``max_throttle`` the cap on a camera's
    ``throttleTimeout``; ``request_timeout`` bounds info and state requests and connects (a
    poll's read timeout is ``wait_timeout + hold_grace``, so a held request is never cut short);
    ``backoff`` the delays after failures (default 0.5 s doubling to 30 s, jittered, reset
    after a healthy minute; ``hubruntime.proto.backoff.Backoff`` fits too).

    Counters, for tests and status: :attr:`polls` (checkForUpdates answered), :attr:`state_fetches`,
    :attr:`changes` (events published), :attr:`unchanged_fingerprints`, :attr:`errors` (failed
    requests), :attr:`last_error` (its redacted reason).
    """

    def __init__(self, source: config.OscSource, bus: EventBus, *, wait_timeout: float = 20,
                 min_interval: float = 1.0, max_throttle: float = 60.0,
                 request_timeout: float = 10.0, hold_grace: float = 10.0,
                 backoff: DelayPolicy | None = None) -> None:
        if wait_timeout < 0 or request_timeout <= 0 or hold_grace <= 0:
            raise ValueError("timeouts must be positive")
        try:
            url = httpx.URL(source.url)
        except httpx.InvalidURL:
            url = httpx.URL("invalid:")
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"osc {source.stream_id}: not an http(s) URL: {redact(source.url)}")
        self.source = source
        self.bus = bus
        self.wait_timeout = wait_timeout
        self.request_timeout = request_timeout
        self.hold_grace = hold_grace
        self._auth = _CameraAuth(url.username, url.password) if url.username else None
        self.base_url = str(url.copy_with(username=None, password=None))
        self.shown_url = redact(source.url)
        self.scheduler = PollScheduler(
            min_interval=min_interval, max_throttle=max_throttle,
            backoff=backoff or Backoff(0.5, 30.0, 60.0))
        self.info: OscInfo | None = None
        self.state: dict[str, Any] | None = None
        self.fingerprint: str | None = None
        self.polls = 0
        self.state_fetches = 0
        self.changes = 0
        self.unchanged_fingerprints = 0
        self.errors = 0
        self.last_error: str | None = None
        self._progress = trio.Event()
        self._logged_reason: str | None = None
        self._logged_at = 0.0
        self._unlogged = 0

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the camera until cancelled. ``started`` comes at once, before the camera is
        reached: an unreachable camera is a logged, retried condition, not a startup failure."""
        timeout = httpx.Timeout(self.request_timeout)
        async with httpx.AsyncClient(base_url=self.base_url, auth=self._auth, timeout=timeout,
                                     headers=dict(REQUEST_HEADERS)) as http:
            task_status.started()
            while True:
                step, due = self.scheduler.next()
                await trio.sleep_until(due)
                self.scheduler.begin(trio.current_time())
                try:
                    if step is Step.INFO:
                        await self._info(http)
                    elif step is Step.STATE:
                        await self._state(http)
                    else:
                        await self._poll(http)
                except _FAILURES as exc:
                    self._failed(step, exc)
                self._tick()

    async def wait_until(self, predicate: Callable[[OscClient], bool]) -> None:
        """Return once ``predicate(self)`` holds; checked after every request (for tests and
        tools; put a deadline around it)."""
        while not predicate(self):
            await self._progress.wait()

    # -- the three steps -------------------------------------------------------------------

    async def _info(self, http: httpx.AsyncClient) -> None:
        info = parse_info(await self._call(http, "GET", "/osc/info", None, self.request_timeout))
        self.info = info
        self.scheduler.info_done(trio.current_time())
        log.info("osc %s: %s at %s", self.source.stream_id, info.describe(), self.shown_url)
        if 2 not in info.api_level:
            log.info("osc %s: the camera does not declare API level 2; polling anyway",
                     self.source.stream_id)

    async def _state(self, http: httpx.AsyncClient) -> None:
        reply = parse_state(await self._call(http, "POST", "/osc/state", None,
                                             self.request_timeout))
        self.state_fetches += 1
        self._recovered()
        previous, previous_fp = self.state, self.fingerprint
        self.state, self.fingerprint = reply.state, reply.fingerprint
        self.scheduler.state_done(trio.current_time(), reply.fingerprint)
        if previous is None:
            log.debug("osc %s: initial state %s", self.source.stream_id, reply.fingerprint)
            return
        diff = diff_state(previous, reply.state)
        if not diff:
            if reply.fingerprint != previous_fp:
                self.unchanged_fingerprints += 1
                log.debug("osc %s: fingerprint %s -> %s but no state value changed",
                          self.source.stream_id, previous_fp, reply.fingerprint)
            return
        try:
            self.bus.publish("osc_state_changed", streamId=self.source.stream_id, source="osc",
                             fingerprint=reply.fingerprint, changed=diff.changed,
                             state=diff.values)
        except catalogue.EventValidationError as exc:  # cannot happen with JSON input; be loud
            log.error("osc %s: could not publish the change: %s", self.source.stream_id, exc)
            return
        self.changes += 1

    async def _poll(self, http: httpx.AsyncClient) -> None:
        fp = self.scheduler.fingerprint
        assert fp is not None  # POLL only follows a successful STATE
        body = check_for_updates_body(fp, self.wait_timeout)
        update = parse_update(await self._call(http, "POST", "/osc/checkForUpdates", body,
                                               self.wait_timeout + self.hold_grace))
        self.polls += 1
        self._recovered()
        self.scheduler.poll_done(trio.current_time(), update.fingerprint, update.throttle)

    # -- plumbing --------------------------------------------------------------------------

    async def _call(self, http: httpx.AsyncClient, method: str, path: str,
                    body: dict[str, Any] | None, read_timeout: float) -> dict[str, Any]:
        """One request; the decoded answer object, or one of ``_FAILURES`` raised."""
        content = encode(body) if body is not None else None
        timeout = httpx.Timeout(self.request_timeout, read=read_timeout)
        async with http.stream(method, path, content=content,
                               headers=_JSON_TYPE if content is not None else None,
                               timeout=timeout) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_BODY:
                    raise OscProtocolError(f"{path}: answer larger than {MAX_BODY} bytes")
                chunks.append(chunk)
        return decode_reply(path, response.status_code, b"".join(chunks))

    def _failed(self, step: Step, exc: BaseException) -> None:
        """Count, remember and log a failure. A warning for a new reason, then at most one per
        :data:`REPEAT_LOG_SECS` for the same reason (with how many were not shown): a camera
        that stays down for a day must not fill the log with the same line twice a minute."""
        self.errors += 1
        reason = redact(_reason(exc, step, self))
        self.last_error = reason
        now = trio.current_time()
        delay = self.scheduler.failed(now)
        if reason == self._logged_reason and now - self._logged_at < REPEAT_LOG_SECS:
            self._unlogged += 1
            log.debug("osc %s: %s; retry %d in %.1f s", self.source.stream_id, reason,
                      self.scheduler.failures, delay)
            return
        repeats = ""
        if self._unlogged and reason == self._logged_reason:
            repeats = f" ({self._unlogged} more like it not logged)"
        elif self._unlogged:
            repeats = f" (after {self._unlogged} unlogged repeat(s) of the previous failure)"
        log.warning("osc %s (%s): %s%s; retry %d in %.1f s", self.source.stream_id,
                    self.shown_url, reason, repeats, self.scheduler.failures, delay)
        self._logged_reason, self._logged_at, self._unlogged = reason, now, 0

    def _recovered(self) -> None:
        if self.errors and self.last_error is not None:
            log.info("osc %s (%s): the camera answers again", self.source.stream_id,
                     self.shown_url)
            self.last_error = None
            self._logged_reason, self._unlogged = None, 0

    def _tick(self) -> None:
        self._progress.set()
        self._progress = trio.Event()


_WHAT = {Step.INFO: "GET /osc/info", Step.STATE: "POST /osc/state",
         Step.POLL: "POST /osc/checkForUpdates"}


def _reason(exc: BaseException, step: Step, client: OscClient) -> str:
    """A failure as one clear line: which request, and what went wrong in words."""
    what = _WHAT[step]
    if isinstance(exc, httpx.ConnectTimeout):
        return f"{what}: connecting timed out after {client.request_timeout:g} s"
    if isinstance(exc, httpx.ConnectError):
        return f"{what}: cannot connect ({exc or 'refused'})"
    if isinstance(exc, httpx.ReadTimeout):
        limit = client.wait_timeout + client.hold_grace if step is Step.POLL \
            else client.request_timeout
        return f"{what}: no answer within {limit:g} s"
    if isinstance(exc, httpx.TimeoutException):
        return f"{what}: timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"{what}: connection broken ({exc})"
    if isinstance(exc, OscErrorReply):
        code = f" {exc.code}" if exc.code else ""
        message = f": {exc.message}" if exc.message else ""
        return f"{what}: camera answered HTTP {exc.status}{code}{message}"
    if isinstance(exc, OscProtocolError):
        text = str(exc).removeprefix(what.split(" ", 1)[1] + ": ")
        return f"{what}: bad answer: {text}"
    return f"{what}: {type(exc).__name__}: {exc}"
