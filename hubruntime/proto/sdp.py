"""SDP (RFC 4566), the parts an RTSP relay needs: each media's kind, clock rate and control.

Why not aiortsp's SDP parser (departure from DESIGN §8): it reads ``a=rtpmap:97
MPEG4-GENERIC/48000/1`` as encoding ``MPEG4-GENERIC/48000`` at clock rate 1, so every AAC track
with a channel count would have the wrong clock, and the health monitor's lag would be nonsense.

The session text is kept as received: the relay re-serves it to viewers with only the control
attributes rewritten (``with_controls``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# static payload types of RFC 3551 that cameras use, with their clock rates
STATIC_CLOCKS = {0: ("PCMU", 8000), 8: ("PCMA", 8000), 14: ("MPA", 90000), 26: ("JPEG", 90000),
                 32: ("MPV", 90000), 33: ("MP2T", 90000)}


class SdpError(ValueError):
    """An SDP body that cannot describe a stream."""


@dataclass
class Media:
    index: int
    kind: str  # video, audio, application, …
    port: int
    protocol: str
    formats: list[str]
    encoding: str = ""
    clock_rate: int = 90000
    channels: int = 1
    control: str | None = None
    fmtp: str | None = None
    lines: list[str] = field(default_factory=list)  # its raw lines, m= first


@dataclass
class SessionDescription:
    session_lines: list[str]
    media: list[Media]

    def encode(self) -> str:
        lines = list(self.session_lines)
        for m in self.media:
            lines.extend(m.lines)
        return "\r\n".join(lines) + "\r\n"

    def with_controls(self, controls: list[str], session_control: str | None = "*",
                      *, any_address: bool = False) -> str:
        """The same description with ``a=control`` of each media replaced (and the session's).

        ``any_address``: ``c=`` lines say 0.0.0.0 (``::``), as RFC 2326 C.1 suggests for a
        unicast DESCRIBE, instead of where the publisher sent from (the hub's own loopback,
        meaningless to a viewer, and to one behind the cloud relay above all).
        """

        def keep(ln: str) -> bool:
            return not ln.startswith("a=control:")

        def fix(ln: str) -> str:
            if any_address and ln.startswith("c=IN "):
                return "c=IN IP6 ::" if ln.startswith("c=IN IP6") else "c=IN IP4 0.0.0.0"
            return ln

        lines = [fix(ln) for ln in self.session_lines if keep(ln)]
        if session_control is not None:
            lines.append(f"a=control:{session_control}")
        for m, ctl in zip(self.media, controls, strict=True):
            lines.extend(fix(ln) for ln in m.lines if keep(ln))
            lines.append(f"a=control:{ctl}")
        return "\r\n".join(lines) + "\r\n"


def parse_sdp(text: str) -> SessionDescription:
    session: list[str] = []
    media: list[Media] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"malformed SDP line {line[:60]!r}")
        if line.startswith("m="):
            parts = line[2:].split()
            if len(parts) < 4:
                raise SdpError(f"malformed media line {line[:60]!r}")
            try:
                port = int(parts[1].split("/")[0])
            except ValueError:
                raise SdpError(f"malformed media port in {line[:60]!r}") from None
            m = Media(len(media), parts[0].lower(), port, parts[2], parts[3:], lines=[line])
            first = parts[3]
            if first.isdigit() and int(first) in STATIC_CLOCKS:
                m.encoding, m.clock_rate = STATIC_CLOCKS[int(first)]
            media.append(m)
            continue
        if not media:
            session.append(line)
            continue
        m = media[-1]
        m.lines.append(line)
        if line.startswith("a=rtpmap:"):
            pt, _, desc = line[9:].partition(" ")
            if m.formats and pt.strip() == m.formats[0]:
                enc = desc.strip().split("/")
                m.encoding = enc[0]
                try:
                    if len(enc) > 1:
                        m.clock_rate = int(enc[1])
                    if len(enc) > 2:
                        m.channels = int(enc[2])
                except ValueError:
                    raise SdpError(f"malformed rtpmap {line[:60]!r}") from None
                if m.clock_rate <= 0:
                    raise SdpError(f"clock rate must be positive in {line[:60]!r}")
        elif line.startswith("a=control:"):
            m.control = line[10:].strip()
        elif line.startswith("a=fmtp:"):
            m.fmtp = line[7:].strip()
    if not session or not session[0].startswith("v="):
        raise SdpError("SDP must start with v=")
    if not media:
        raise SdpError("SDP describes no media")
    return SessionDescription(session, media)


def media_for_control(sdp: SessionDescription, url_tail: str) -> Media | None:
    """Which media a SETUP URL names: its control attribute at the end of the URL."""
    tail = url_tail.rstrip("/")
    for m in sdp.media:
        ctl = m.control
        if ctl and (tail == ctl or tail.endswith("/" + ctl) or ctl.endswith("/" + tail)):
            return m
    return None
