"""Property-based fuzzing of the RTSP parser (hypothesis).

Whatever a peer sends, ``RtspParser.feed`` must either return items or raise ``ProtocolError``
with a status the server can answer (400-599): any other exception would kill the connection
task without an answer, or worse. It must never hold more than its limits between calls, and
how the bytes are split by the network must not change what it parses.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubruntime.proto import rtsp

FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SMALL = {"max_header": 512, "max_body": 2048, "max_line": 128, "max_headers": 10}


# -- running the parser and checking its invariants ----------------------------------------


@dataclass
class Outcome:
    items: list[tuple]
    status: int | None  # the ProtocolError's, None if all bytes were taken


def norm(item: rtsp.Item) -> tuple:
    if isinstance(item, rtsp.Frame):
        return ("frame", item.channel, item.payload)
    if isinstance(item, rtsp.Request):
        return ("request", item.method, item.uri, item.version, list(item.headers), item.body)
    return ("response", item.status, item.reason, item.version, list(item.headers), item.body)


def check_buffer(p: rtsp.RtspParser) -> None:
    """What may stay buffered between calls: one incomplete item, within the limits."""
    buf = p._buf
    limits = p._max_header + p._max_body + 4 + 0xFFFF
    assert len(buf) <= limits
    if p._pending is not None:
        assert len(buf) < p._body_len <= p._max_body
    elif buf[:1] == b"$":
        assert len(buf) < 4 + 0xFFFF
    elif buf:
        assert buf[:1] not in (b"\r", b"\n")  # stray line ends are consumed at once
        assert len(buf) <= p._max_header + 3
        if b"\n" not in buf:
            assert len(buf) <= p._max_line + 1  # the start line, maybe with its CR


def run(chunks: list[bytes], **limits: int) -> Outcome:
    p = rtsp.RtspParser(**limits)
    items: list[tuple] = []
    for chunk in chunks:
        try:
            got = p.feed(chunk)
        except rtsp.ProtocolError as e:
            assert 400 <= e.status <= 599, e.status
            return Outcome(items, e.status)
        items.extend(norm(i) for i in got)
        check_buffer(p)
    return Outcome(items, None)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    out, last = [], 0
    for c in points:
        out.append(data[last:c])
        last = c
    out.append(data[last:])
    return out


def check_split_invariance(data: bytes, cuts: list[int], **limits: int) -> Outcome:
    whole = run([data], **limits)
    parts = run(split(data, cuts), **limits)
    assert parts.status == whole.status
    if whole.status is None:
        assert parts.items == whole.items
    else:  # feed() loses the items of the call that fails; the split run may have more
        assert parts.items[:len(whole.items)] == whole.items
    bytewise = run([data[i:i + 1] for i in range(len(data))], **limits) if len(data) < 600 \
        else parts
    assert bytewise.status == whole.status
    if whole.status is None:
        assert bytewise.items == whole.items
    return whole


# -- valid messages --------------------------------------------------------------------------

TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12)
VALUE = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation
                + " éß漢🎥", max_size=40).map(str.strip)
METHODS = st.sampled_from(["OPTIONS", "DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN",
                           "GET_PARAMETER", "SET_PARAMETER", "ANNOUNCE", "RECORD", "FROB"])
HEADERS = st.lists(st.tuples(TOKEN.filter(lambda n: n.lower() != "content-length"), VALUE),
                   max_size=6)
EOL = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def request(draw) -> tuple[bytes, tuple]:
    method = draw(METHODS)
    uri = "rtsp://h:5554/" + draw(TOKEN)
    headers = draw(HEADERS)
    body = draw(st.binary(max_size=200))
    eol = draw(EOL)
    if body:
        headers = [*headers, ("Content-Length", str(len(body)))]
    lines = [f"{method} {uri} RTSP/1.0".encode()]
    lines += [f"{k}: {v}".encode() for k, v in headers]
    data = eol.join(lines) + eol + eol + body
    return data, ("request", method, uri, "RTSP/1.0", headers, body)


@st.composite
def response(draw) -> tuple[bytes, tuple]:
    status = draw(st.integers(100, 599))
    reason = draw(st.text(alphabet=string.ascii_letters + " ", max_size=20))
    headers = draw(HEADERS)
    body = draw(st.binary(max_size=200))
    if body:
        headers = [*headers, ("Content-Length", str(len(body)))]
    data = rtsp.encode_response(status, None, [h for h in headers if h[0] != "Content-Length"],
                                body, reason=reason or "X")
    return data, ("response", status, reason or "X", "RTSP/1.0", headers, body)


@st.composite
def frame(draw) -> tuple[bytes, tuple]:
    channel = draw(st.integers(0, 255))
    payload = draw(st.binary(max_size=300))
    return rtsp.encode_frame(channel, payload), ("frame", channel, payload)


@st.composite
def stream(draw) -> tuple[bytes, list[tuple]]:
    """A valid sequence of messages and frames, with stray line ends in between."""
    parts = draw(st.lists(st.one_of(request(), response(), frame()), min_size=1, max_size=6))
    data = b""
    for raw, _ in parts:
        data += raw + draw(st.sampled_from([b"", b"", b"\r\n", b"\n", b"\r\n\r\n"]))
    return data, [item for _, item in parts]


CUTS = st.lists(st.integers(0, 5000), max_size=8)


@FUZZ
@given(stream(), CUTS)
def test_valid_streams_parse_the_same_however_split(s, cuts):
    data, expected = s
    outcome = check_split_invariance(data, cuts)
    assert outcome.status is None
    assert outcome.items == expected


# -- hostile input ---------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=3000), CUTS)
def test_random_bytes(data, cuts):
    check_split_invariance(data, cuts)
    check_split_invariance(data, cuts, **SMALL)


NASTY_LENGTHS = st.sampled_from([
    "-1", "-0", "+3", "0x10", "1e3", "3, 4", "", " ", "²", "٣", "1 2", "9" * 5000,
    "99999999999999999999", "00000000000000000000007", str(rtsp.MAX_BODY_BYTES),
    str(rtsp.MAX_BODY_BYTES + 1), "18446744073709551616", "5", "0",
])


@st.composite
def nasty_message(draw) -> bytes:
    """Requests with hostile Content-Length values, and frames whose length lies."""
    kind = draw(st.sampled_from(["length", "frame", "many_headers", "long_line"]))
    if kind == "length":
        length = draw(NASTY_LENGTHS)
        return (f"ANNOUNCE rtsp://h/x RTSP/1.0\r\nCSeq: 1\r\nContent-Length: {length}\r\n\r\n"
                .encode() + draw(st.binary(max_size=50)))
    if kind == "frame":
        size = draw(st.sampled_from([0, 1, 3, 0xFFFF, 0x8000, 40]))
        payload = draw(st.binary(max_size=60))
        return bytes((0x24, draw(st.integers(0, 255)), size >> 8, size & 0xFF)) + payload
    if kind == "many_headers":
        n = draw(st.integers(0, 130))
        eol = draw(EOL)
        return b"OPTIONS * RTSP/1.0" + eol + b"".join(b"X-%d: v%s" % (i, eol)
                                                     for i in range(n)) + eol
    n = draw(st.integers(rtsp.MAX_REQUEST_LINE - 40, rtsp.MAX_REQUEST_LINE + 40))
    line = b"DESCRIBE rtsp://h/" + b"a" * max(0, n - 27) + b" RTSP/1.0"
    return line + draw(st.sampled_from([b"", b"\r", b"\r\n", b"\r\nCSeq: 1\r\n\r\n"]))


@st.composite
def mutated(draw) -> bytes:
    """A valid stream, or a hostile message, then bent: flips, cuts, line ends, garbage."""
    base = draw(st.one_of(stream().map(lambda s: s[0]), nasty_message()))
    data = bytearray(base)
    for op in draw(st.lists(st.sampled_from(["flip", "truncate", "line_end", "garbage",
                                             "dollar", "nothing"]), min_size=1, max_size=4)):
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "line_end":
            data[pos:pos] = draw(st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\n", b"\r\n\r\n",
                                                  b"\n\r"]))
        elif op == "garbage":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "dollar":
            data[pos:pos] = b"$" + draw(st.binary(min_size=0, max_size=3))
    return bytes(data)


@FUZZ
@given(nasty_message(), CUTS)
def test_hostile_messages(data, cuts):
    check_split_invariance(data, cuts)


@FUZZ
@given(mutated(), CUTS)
def test_mutated_messages(data, cuts):
    check_split_invariance(data, cuts)


@FUZZ
@given(mutated(), CUTS)
def test_mutated_messages_with_small_limits(data, cuts):
    check_split_invariance(data, cuts, **SMALL)


PIECES = st.one_of(
    st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"$", b"$\x00\x00\x05", b" ", b":",
                     b"PLAY rtsp://h/x RTSP/1.0", b"RTSP/1.0 200 OK", b"Content-Length: ",
                     b"Content-Length: 10", b"CSeq: 1", b"\x00", b"\xff", b" RTSP/1.0"]),
    st.integers(0, 700).map(lambda n: b"a" * n),
    st.binary(max_size=20),
)


@FUZZ
@given(st.lists(PIECES, max_size=30).map(b"".join), CUTS)
def test_structured_noise_against_the_limits(data, cuts):
    """Protocol fragments and long runs, to reach every limit of a small-limit parser."""
    check_split_invariance(data, cuts, **SMALL)


@pytest.mark.parametrize("size", range(rtsp.MAX_HEADER_BYTES - 3, rtsp.MAX_HEADER_BYTES + 3))
@pytest.mark.parametrize("terminator", range(5))
def test_header_block_around_the_default_limit(size, terminator):
    head = b"SETUP rtsp://h/x RTSP/1.0\r\nX-Pad: "
    data = head + b"p" * (size - len(head)) + b"\r\n\r\n"[:terminator]
    # every cut near the end: inside the terminator is where a split could change the verdict
    for k in range(7):
        outcome = check_split_invariance(data, [len(data) - k])
    if terminator == 4:
        assert (outcome.status is None) == (size <= rtsp.MAX_HEADER_BYTES)
    else:
        assert outcome.status == (413 if size + terminator > rtsp.MAX_HEADER_BYTES + 3 else None)


@pytest.mark.parametrize("size", range(rtsp.MAX_REQUEST_LINE - 2, rtsp.MAX_REQUEST_LINE + 3))
@pytest.mark.parametrize("ending", [b"", b"\r", b"\r\n", b"\n", b"\r\nCSeq: 1\r\n\r\n"])
def test_start_line_around_the_default_limit(size, ending):
    line = b"DESCRIBE rtsp://h/" + b"a" * (size - 27) + b" RTSP/1.0"
    assert len(line) == size
    data = line + ending
    for k in range(4):
        outcome = check_split_invariance(data, [len(data) - k])
    assert (outcome.status == 414) == (size > rtsp.MAX_REQUEST_LINE)
