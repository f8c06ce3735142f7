import pytest

from hubruntime.proto.sdp import SdpError, media_for_control, parse_sdp

FFMPEG_SDP = """v=0
o=- 0 0 IN IP4 127.0.0.1
s=No Name
c=IN IP4 127.0.0.1
t=0 0
a=tool:libavformat 59.27.100
m=video 0 RTP/AVP 96
a=rtpmap:96 H264/90000
a=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z0LAHtkDxWhAAAADAEAAAAwDxYuS,aMuMsg==
a=control:streamid=0
m=audio 0 RTP/AVP 97
b=AS:128
a=rtpmap:97 MPEG4-GENERIC/48000/2
a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3
a=control:streamid=1
"""


def test_ffmpeg_sdp_clock_rates_and_controls():
    sdp = parse_sdp(FFMPEG_SDP)
    video, audio = sdp.media
    assert (video.kind, video.encoding, video.clock_rate, video.control) == (
        "video", "H264", 90000, "streamid=0")
    assert (audio.kind, audio.encoding, audio.clock_rate, audio.channels) == (
        "audio", "MPEG4-GENERIC", 48000, 2)
    assert media_for_control(sdp, "streamid=1") is audio
    assert media_for_control(sdp, "rtsp://h/publish/x/y/streamid=0") is video
    assert media_for_control(sdp, "trackID=5") is None


def test_static_payload_type_and_rewritten_controls():
    sdp = parse_sdp("v=0\r\ns=-\r\nm=audio 0 RTP/AVP 8\r\na=control:a\r\n")
    assert sdp.media[0].encoding == "PCMA" and sdp.media[0].clock_rate == 8000
    text = parse_sdp(FFMPEG_SDP).with_controls(["trackID=0", "trackID=1"])
    again = parse_sdp(text)
    assert [m.control for m in again.media] == ["trackID=0", "trackID=1"]
    assert "a=control:*" in text


@pytest.mark.parametrize("text", ["", "s=no version\r\nm=video 0 RTP/AVP 96",
                                  "v=0\r\ns=x\r\n", "v=0\r\nm=video x RTP/AVP 96",
                                  "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/abc",
                                  "garbage"])
def test_bad_sdp_is_refused(text):
    with pytest.raises(SdpError):
        parse_sdp(text)


def test_viewers_get_any_address_instead_of_the_publishers_loopback():
    src = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=video 0 RTP/AVP 96\r\nc=IN IP6 ::1\r\na=rtpmap:96 H264/90000\r\n")
    text = parse_sdp(src).with_controls(["trackID=0"], any_address=True)
    assert [ln for ln in text.split("\r\n") if ln.startswith("c=")] == [
        "c=IN IP4 0.0.0.0", "c=IN IP6 ::"]
    assert "o=- 0 0 IN IP4 127.0.0.1" in text  # the origin line is left as it is
    assert "c=IN IP4 127.0.0.1" in parse_sdp(src).with_controls(["trackID=0"])
