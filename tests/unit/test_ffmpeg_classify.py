"""classify_failure on stderr texts FFmpeg really printed (loopback peers, -loglevel error).

Samples marked 5.1 come from Debian's FFmpeg 5.1.9, 9.0 from imageio-ffmpeg's 9.0.2; ports and
addresses are the ones of the run. DNS texts come from one lookup of a ``.invalid`` name and from
FFmpeg's source (tcp.c: "Failed to resolve hostname %s: %s" with the libc's gai_strerror text);
tests never resolve names.
"""

from __future__ import annotations

import pytest

from hubruntime.media.ffmpeg import MESSAGE_MAX, REASONS, classify_failure

REFUSED_51 = """\
[tcp @ 0x5630436e3980] Connection to tcp://127.0.0.1:1?timeout=1000000 failed: Connection refused
rtsp://127.0.0.1:1/x: Connection refused
"""
REFUSED_90 = """\
[tcp @ 0x56480b8a7600] Connection to tcp://127.0.0.1:1?timeout=1000000 failed: Connection refused
[in#0 @ 0x56480b8a3fc0] Error opening input: Connection refused
Error opening input file rtsp://127.0.0.1:1/x.
Error opening input files: Connection refused
"""
# A listener whose accept queue is full: the SYN is never answered.
CONNECT_TIMEOUT_51 = """\
[tcp @ 0x564bc968f840] Connection to tcp://127.0.0.1:32783?timeout=1000000 failed: \
Connection timed out
rtsp://127.0.0.1:32783/x: Connection timed out
"""
CONNECT_TIMEOUT_90 = """\
[tcp @ 0x56287c0a9440] Connection to tcp://127.0.0.1:50339?timeout=1000000 failed: \
Connection timed out
[in#0 @ 0x56287c0a5e00] Error opening input: Connection timed out
Error opening input file rtsp://127.0.0.1:50339/x.
Error opening input files: Connection timed out
"""
# A camera stalled (SIGSTOP) while playing: exit 0, ~2.2 s after the 1 s -timeout.
STALL_51 = "rtsp://127.0.0.1:44343/cam: Connection timed out\n"
STALL_90 = "[in#0/rtsp @ 0x55b8d37faf40] Error during demuxing: Connection timed out\n"
DNS_51 = """\
[tcp @ 0x56082b64b5c0] Failed to resolve hostname nonexistent.invalid: Name or service not known
rtsp://nonexistent.invalid/x: Input/output error
"""
NOT_FOUND_51 = """\
[rtsp @ 0x55db47102ac0] method OPTIONS failed: 404 Not Found
rtsp://127.0.0.1:39289/x: Server returned 404 Not Found
"""
NOT_FOUND_90 = """\
[in#0 @ 0x55dba280d340] method OPTIONS failed: 404 (Not Found)
[in#0 @ 0x55dba280cfc0] Error opening input: Server returned 404 Not Found
Error opening input file rtsp://127.0.0.1:32923/x.
Error opening input files: Server returned 404 Not Found
"""
UNAUTHORIZED_51 = """\
[rtsp @ 0x55887409cac0] method OPTIONS failed: 401 Unauthorized
rtsp://127.0.0.1:43913/x: Server returned 401 Unauthorized (authorization failed)
"""
UNAUTHORIZED_90 = """\
[in#0 @ 0x55b7ae517340] method OPTIONS failed: 401 (Unauthorized)
[in#0 @ 0x55b7ae516fc0] Error opening input: Server returned 401 Unauthorized (authorization \
failed)
Error opening input file rtsp://127.0.0.1:40983/x.
Error opening input files: Server returned 401 Unauthorized (authorization failed)
"""
FORBIDDEN_51 = """\
[rtsp @ 0x5571165bfac0] method OPTIONS failed: 403 Forbidden
rtsp://127.0.0.1:33217/x: Server returned 403 Forbidden (access denied)
"""
SERVER_ERROR_51 = """\
[rtsp @ 0x5644463a9ac0] method OPTIONS failed: 500 Internal Server Error
rtsp://127.0.0.1:42879/x: Server returned 5XX Server Error reply
"""
UNAVAILABLE_51 = """\
[rtsp @ 0x55beeae82ac0] method OPTIONS failed: 503 Service Unavailable
rtsp://127.0.0.1:40769/x: Server returned 5XX Server Error reply
"""
UNSUPPORTED_TRANSPORT_51 = """\
[rtsp @ 0x556062616ac0] method OPTIONS failed: 461 Unsupported Transport
rtsp://127.0.0.1:35259/x: Server returned 4XX Client Error, but not one of 40{0,1,3,4}
"""
UNSUPPORTED_TRANSPORT_90 = """\
[in#0 @ 0x563649e9c340] method OPTIONS failed: 461 (Unsupported Transport)
[in#0 @ 0x563649e9bfc0] Error opening input: Server returned 4XX Client Error, but not one of \
40{0,1,3,4}
Error opening input file rtsp://127.0.0.1:43285/x.
Error opening input files: Server returned 4XX Client Error, but not one of 40{0,1,3,4}
"""
# Same text for: garbage answer, HTTP answer, peer closing at once, peer silent until -timeout.
INVALID_DATA_51 = "rtsp://127.0.0.1:37691/x: Invalid data found when processing input\n"
INVALID_DATA_90 = """\
[in#0 @ 0x5608dce21fc0] Error opening input: Invalid data found when processing input
Error opening input file rtsp://127.0.0.1:43691/x.
Error opening input files: Invalid data found when processing input
"""
NONMATCHING_51 = """\
[rtsp @ 0x5557127ec980] Nonmatching transport in server reply
rtsp://127.0.0.1:34183/x: Invalid data found when processing input
"""
NONMATCHING_90 = """\
[in#0 @ 0x5569c9249180] Nonmatching transport in server reply
[in#0 @ 0x5569c9248e40] Error opening input: Invalid data found when processing input
Error opening input file rtsp://127.0.0.1:45165/x.
Error opening input files: Invalid data found when processing input
"""
BAD_SCHEME_51 = "foo://bar: Protocol not found\nDid you mean file:foo://bar?\n"
# A camera that never sent a packet, H.264 without usable parameters (probing found nothing).
DIMENSIONS_51 = """\
[rtsp @ 0x557397bdd300] dimensions not set
Could not write header for output file #0 (incorrect codec parameters ?): Invalid argument
Error initializing output stream 0:1 --
"""
# With -map 0 and an ONVIF metadata track (why the reader maps only 0:v? and 0:a?).
METADATA_TRACK_51 = """\
[rtp @ 0x557ca6c6e840] Unsupported codec none
Could not write header for output file #0 (incorrect codec parameters ?): Operation not permitted
Error initializing output stream 0:1 --
"""
# The hub's endpoint, not the camera, failing.
PUBLISH_REFUSED_51 = """\
[tcp @ 0x55c8d3720900] Connection to tcp://127.0.0.1:34277?timeout=0 failed: Connection refused
Could not write header for output file #0 (incorrect codec parameters ?): Connection refused
Error initializing output stream 0:1 --
"""
PUBLISH_REFUSED_90 = """\
[tcp @ 0x563c0bf6f400] Connection to tcp://127.0.0.1:41597?timeout=0 failed: Connection refused
[out#0/rtsp @ 0x563c0bee0500] Could not write header (incorrect codec parameters ?): Connection \
refused
"""
PUBLISH_404_51 = """\
[rtsp @ 0x55ff45540780] method ANNOUNCE failed: 404 Not Found
Could not write header for output file #0 (incorrect codec parameters ?): Server returned 404 \
Not Found
Error initializing output stream 0:1 --
"""
PUBLISH_BROKEN_51 = """\
av_interleaved_write_frame(): Broken pipe
Error writing trailer of rtsp://127.0.0.1:46255/pub: Broken pipe
"""
PUBLISH_BROKEN_90 = """\
[aost#0:1/copy @ 0x55b5cdcd9240] Error submitting a packet to the muxer: Broken pipe
    Last message repeated 1 times
[out#0/rtsp @ 0x55b5cddb3980] Error muxing a packet
[out#0/rtsp @ 0x55b5cddb3980] Task finished with error code: -32 (Broken pipe)
[out#0/rtsp @ 0x55b5cddb3980] Terminating thread with return code -32 (Broken pipe)
[out#0/rtsp @ 0x55b5cddb3980] Error writing trailer: Broken pipe
"""


@pytest.mark.parametrize(
    ("returncode", "stderr", "reason", "telling"),
    [
        (1, REFUSED_51, "refused", "Connection refused"),
        (145, REFUSED_90, "refused", "Connection refused"),
        (1, CONNECT_TIMEOUT_51, "timeout", "Connection timed out"),
        (146, CONNECT_TIMEOUT_90, "timeout", "Connection timed out"),
        (0, STALL_51, "timeout", "Connection timed out"),
        (0, STALL_90, "timeout", "Error during demuxing: Connection timed out"),
        (1, DNS_51, "dns", "Failed to resolve hostname nonexistent.invalid"),
        (1, NOT_FOUND_51, "not_found", "method OPTIONS failed: 404 Not Found"),
        (8, NOT_FOUND_90, "not_found", "method OPTIONS failed: 404 (Not Found)"),
        (1, UNAUTHORIZED_51, "unauthorized", "method OPTIONS failed: 401 Unauthorized"),
        (8, UNAUTHORIZED_90, "unauthorized", "401 (Unauthorized)"),
        (1, FORBIDDEN_51, "unauthorized", "403 Forbidden"),
        (1, SERVER_ERROR_51, "protocol", "500 Internal Server Error"),
        (1, UNAVAILABLE_51, "protocol", "503 Service Unavailable"),
        (1, UNSUPPORTED_TRANSPORT_51, "protocol", "461 Unsupported Transport"),
        (8, UNSUPPORTED_TRANSPORT_90, "protocol", "461 (Unsupported Transport)"),
        (1, INVALID_DATA_51, "protocol", "Invalid data found when processing input"),
        (183, INVALID_DATA_90, "protocol", "Invalid data found when processing input"),
        (1, NONMATCHING_51, "protocol", "Nonmatching transport in server reply"),
        (183, NONMATCHING_90, "protocol", "Nonmatching transport in server reply"),
        (1, BAD_SCHEME_51, "protocol", "foo://bar: Protocol not found"),
        (1, DIMENSIONS_51, "protocol", "dimensions not set"),
        (1, METADATA_TRACK_51, "protocol", "Unsupported codec none"),
        (1, PUBLISH_REFUSED_51, "closed", "publishing to the hub failed: Connection to tcp://"),
        (145, PUBLISH_REFUSED_90, "closed", "Connection refused"),
        (1, PUBLISH_404_51, "closed", "hub failed: method ANNOUNCE failed: 404 Not Found"),
        (1, PUBLISH_BROKEN_51, "closed", "av_interleaved_write_frame(): Broken pipe"),
        (224, PUBLISH_BROKEN_90, "closed", "Error submitting a packet to the muxer: Broken pipe"),
    ],
)
def test_observed_stderr(returncode: int, stderr: str, reason: str, telling: str) -> None:
    got, message = classify_failure(returncode, stderr)
    assert got == reason
    assert telling in message
    assert "@ 0x" not in message  # FFmpeg's "[tcp @ 0x…]" context prefix is dropped
    assert len(message) <= MESSAGE_MAX


@pytest.mark.parametrize(
    "text",
    [
        "Name or service not known",  # glibc EAI_NONAME
        "Temporary failure in name resolution",  # glibc EAI_AGAIN
        "No address associated with hostname",  # glibc EAI_NODATA
        "nodename nor servname provided, or not known",  # macOS/BSD
        "Name does not resolve",  # musl (Alpine)
    ],
)
def test_dns_texts(text: str) -> None:
    stderr = (
        f"[tcp @ 0x55d0] Failed to resolve hostname cam.example: {text}\n"
        "rtsp://admin:hunter2@cam.example/live: Input/output error\n"
    )
    reason, message = classify_failure(1, stderr)
    assert reason == "dns"
    assert text in message
    # Without the "Failed to resolve" line, the libc text alone still says DNS.
    assert classify_failure(1, f"rtsp://cam.example/x: {text}\n")[0] == "dns"


@pytest.mark.parametrize(
    ("returncode", "stderr", "telling"),
    [
        (0, "", "ended without an error"),  # camera gone mid-stream: exit 0, nothing said
        (255, "", "signal"),  # our SIGTERM: FFmpeg exits 255 silently at -loglevel error
        (-9, "", "killed by signal 9"),  # SIGKILL from the supervisor
        (None, "", "still running"),
        (1, "rtsp://127.0.0.1:5/x: End of file\n", "End of file"),
        (1, "[tcp @ 0x1] Connection reset by peer\n", "Connection reset by peer"),
        (1, "Immediate exit requested\n", "Immediate exit requested"),
        (1, "Unrecognized option 'stimeout'.\n", "Unrecognized option"),  # unknown: last line
    ],
)
def test_closed(returncode: int | None, stderr: str, telling: str) -> None:
    reason, message = classify_failure(returncode, stderr)
    assert reason == "closed"
    assert telling in message


def test_more_telling_line_wins_over_summary() -> None:
    # FFmpeg 9.0 repeats the error three times; the specific line is the one kept.
    _, message = classify_failure(183, NONMATCHING_90)
    assert message == "Nonmatching transport in server reply"
    _, message = classify_failure(1, DNS_51)
    assert message == "Failed to resolve hostname nonexistent.invalid: Name or service not known"


def test_urls_do_not_fool_the_rules() -> None:
    # A path or port that reads like a status must not change the reason.
    stderr = "rtsp://cam:404/Forbidden/NotFound: Connection refused\n"
    assert classify_failure(1, stderr)[0] == "refused"
    stderr = "rtsp://cam/timed out/x: Invalid data found when processing input\n"
    assert classify_failure(1, stderr)[0] == "protocol"


PASSWORDS = ("s3cr3t", "p@ss@word", "hunter2")


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "template",
    [
        "rtsp://admin:{pw}@10.0.0.9:554/live: Connection refused\n",
        "rtsp://admin:{pw}@10.0.0.9/live: Server returned 401 Unauthorized "
        "(authorization failed)\n",
        "Error opening input file rtsp://admin:{pw}@10.0.0.9/live.\n"
        "Error opening input files: Invalid data found when processing input\n",
        "rtsp://admin:{pw}@10.0.0.9/live: Connection timed out\n",
        "Error writing trailer of rtsp://hub:{pw}@127.0.0.1:5554/s1: Broken pipe\n",
        "Some unknown failure about rtsp://admin:{pw}@10.0.0.9/live\n",
        "Could not write header for output file #0 (incorrect codec parameters ?): "
        "rtsp://hub:{pw}@127.0.0.1:5554/s1?token={pw}\n",
    ],
)
def test_password_never_in_message(template: str, password: str) -> None:
    reason, message = classify_failure(1, template.format(pw=password))
    assert reason in REASONS
    assert password not in message
    assert "ss@word" not in message and "word@" not in message
    if "10.0.0.9" in message or "127.0.0.1" in message:
        assert "***@" in message


def test_message_is_bounded() -> None:
    stderr = "rtsp://cam/x: Connection refused " + "x" * 5000 + "\n"
    reason, message = classify_failure(1, stderr)
    assert reason == "refused"
    assert len(message) <= MESSAGE_MAX
