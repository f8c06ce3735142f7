import pytest

from hubruntime.proto import rtsp


def feed_bytewise(data: bytes) -> list:
    p = rtsp.RtspParser()
    out = []
    for i in range(len(data)):
        out.extend(p.feed(data[i:i + 1]))
    return out


ANNOUNCE = (b"ANNOUNCE rtsp://127.0.0.1:5554/publish/cam/s3cret RTSP/1.0\r\n"
            b"Content-Type: application/sdp\r\nCSeq: 2\r\nUser-Agent: Lavf\r\n"
            b"Content-Length: 10\r\n\r\nv=0\r\ns=x\r\n")


def test_request_with_body_then_frames_split_anywhere():
    frame = rtsp.encode_frame(2, b"\x80\x60" + b"x" * 300)
    data = ANNOUNCE + frame + b"\r\n" + rtsp.encode_frame(3, b"rtcp")
    for items in (rtsp.RtspParser().feed(data), feed_bytewise(data)):
        req, f1, f2 = items
        assert isinstance(req, rtsp.Request)
        assert req.method == "ANNOUNCE" and req.cseq == "2"
        assert req.headers.get("content-type") == "application/sdp"
        assert req.body == b"v=0\r\ns=x\r\n"
        assert f1 == rtsp.Frame(2, b"\x80\x60" + b"x" * 300)
        assert f2 == rtsp.Frame(3, b"rtcp")


def test_response_and_folded_header():
    data = b"RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\nWWW-Authenticate: Digest a=1,\r\n b=2\r\n\r\n"
    (resp,) = rtsp.RtspParser().feed(data)
    assert isinstance(resp, rtsp.Response)
    assert resp.status == 401 and resp.headers.get("www-authenticate") == "Digest a=1, b=2"


def test_unknown_method_parses_so_the_server_can_answer_501():
    (req,) = rtsp.RtspParser().feed(b"FROB rtsp://h/x RTSP/1.0\r\nCSeq: 9\r\n\r\n")
    assert req.method == "FROB"


@pytest.mark.parametrize("data, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"PLAY rtsp://h/x HTTP/1.1\r\nCSeq: 1\r\n\r\n", 505),
    (b"PLAY rtsp://h/x RTSP/1.0\r\nNo colon here\r\n\r\n", 400),
    (b"PLAY rtsp://h/x RTSP/1.0\r\nContent-Length: -5\r\n\r\n", 400),
    (b"ANNOUNCE rtsp://h/x RTSP/1.0\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"PLAY " + b"a" * 20000, 414),  # a start line over MAX_REQUEST_LINE, see below
    (b"PLAY rtsp://h/x RTSP/1.0\r\n"  # 60 short header lines, over 16 KiB in all
     + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 300) for i in range(60)), 413),
    (b"\xff\xfe\xfd bad\r\n\r\n", 400),
])
def test_malformed_input_gives_protocol_error_with_status(data, status):
    with pytest.raises(rtsp.ProtocolError) as info:
        rtsp.RtspParser().feed(data)
    assert info.value.status == status


def test_encode_round_trip():
    data = rtsp.encode_response(200, "3", [("Session", "abc;timeout=60")], b"body")
    (resp,) = rtsp.RtspParser().feed(data)
    assert resp.status == 200 and resp.cseq == "3" and resp.body == b"body"
    assert resp.headers.get("Content-Length") == "4"
    req_bytes = rtsp.encode_request("SETUP", "rtsp://h/x/trackID=0", 4,
                                    [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")])
    (req,) = rtsp.RtspParser().feed(req_bytes)
    assert req.method == "SETUP" and req.cseq == "4"
    with pytest.raises(ValueError):
        rtsp.encode_frame(0, b"x" * 70000)


def test_transport_parsing():
    (t,) = rtsp.parse_transport("RTP/AVP/TCP;unicast;interleaved=2-3;mode=record")
    assert t.tcp and t.interleaved == (2, 3) and t.mode == "record"
    assert t.encode() == "RTP/AVP/TCP;unicast;interleaved=2-3;mode=record"
    alts = rtsp.parse_transport("RTP/AVP;unicast;client_port=5000-5001,RTP/AVP/TCP;interleaved=0")
    assert alts[0].client_port == (5000, 5001) and not alts[0].tcp
    assert alts[1].interleaved == (0, 1)
    with pytest.raises(rtsp.ProtocolError) as info:
        rtsp.parse_transport("RAW/RAW/UDP;unicast")
    assert info.value.status == 461
    with pytest.raises(rtsp.ProtocolError):
        rtsp.parse_transport("RTP/AVP;client_port=abc")


def test_start_line_over_limit_is_414_as_soon_as_8_kib_arrive():
    p = rtsp.RtspParser()
    assert p.feed(b"DESCRIBE rtsp://h/" + b"a" * (rtsp.MAX_REQUEST_LINE - 100)) == []
    with pytest.raises(rtsp.ProtocolError) as info:
        p.feed(b"a" * 200)  # 8292 bytes, no line end: no need to wait for 16 KiB
    assert info.value.status == 414
    assert rtsp.MAX_REQUEST_LINE == 8192


def test_start_line_at_the_limit_passes_even_split_before_its_lf():
    line = b"GET_PARAMETER rtsp://h/"
    line += b"a" * (rtsp.MAX_REQUEST_LINE - len(line) - len(b" RTSP/1.0")) + b" RTSP/1.0"
    assert len(line) == rtsp.MAX_REQUEST_LINE
    p = rtsp.RtspParser()
    assert p.feed(line + b"\r") == []
    (req,) = p.feed(b"\nCSeq: 1\r\n\r\n")
    assert req.method == "GET_PARAMETER"
    with pytest.raises(rtsp.ProtocolError) as info:
        rtsp.RtspParser().feed(line + b"a\r\nCSeq: 1\r\n\r\n")  # complete, one byte over
    assert info.value.status == 414


def test_more_than_100_header_lines_is_400():
    head = b"OPTIONS * RTSP/1.0\r\n"
    ok = head + b"".join(b"X-%d: v\r\n" % i for i in range(rtsp.MAX_HEADERS)) + b"\r\n"
    (req,) = rtsp.RtspParser().feed(ok)
    assert len(list(req.headers)) == rtsp.MAX_HEADERS == 100
    bad = head + b"".join(b"X-%d: v\r\n" % i for i in range(rtsp.MAX_HEADERS + 1)) + b"\r\n"
    with pytest.raises(rtsp.ProtocolError) as info:
        rtsp.RtspParser().feed(bad)
    assert info.value.status == 400 and "too many headers" in str(info.value)


def test_header_block_at_the_limit_passes_even_split_inside_its_terminator():
    head = b"OPTIONS * RTSP/1.0\r\nX-Pad: "
    pad = rtsp.MAX_HEADER_BYTES - len(head)
    data = head + b"p" * pad + b"\r\n\r\n"
    p = rtsp.RtspParser()
    assert p.feed(data[:-1]) == []
    (req,) = p.feed(data[-1:])
    assert len(req.headers.get("X-Pad")) == pad


@pytest.mark.parametrize("value", ["\u00b2", "1\u0663", "9" * 5000, "+5", "0x10"])
def test_odd_content_length_is_a_protocol_error_not_a_crash(value):
    data = f"ANNOUNCE rtsp://h/x RTSP/1.0\r\nContent-Length: {value}\r\n\r\n".encode()
    with pytest.raises(rtsp.ProtocolError) as info:
        rtsp.RtspParser().feed(data)
    assert info.value.status in (400, 413)


def test_non_ascii_digit_status_is_a_protocol_error():
    with pytest.raises(rtsp.ProtocolError):
        rtsp.RtspParser().feed("RTSP/1.0 \u0662\u0660\u0660 OK\r\n\r\n".encode())
