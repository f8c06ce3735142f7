"""FFmpeg: find the binary, build the camera reader's command line, classify how a reader ended.

The hub never parses camera RTSP itself: one FFmpeg per camera copies the camera's streams and
publishes them to the hub's loopback RTSP endpoint (DESIGN §1, §3). This module only builds that
command line (with ffmpeg-python, which is unmaintained since 2019, so nothing else of it is used)
and turns FFmpeg's stderr into one of a few reasons once the process has ended. Running and
watching the process belongs to the stream supervisor: FFmpeg neither exits nor complains on a
stall, so every watchdog lives on the packets the hub receives, not here.

Everything measured below was measured on Debian's FFmpeg 5.1.9 and imageio-ffmpeg's 9.0.2 with
loopback peers (GStreamer's RTSP server as the camera, canned RTSP answers for the failures).
"""

from __future__ import annotations

import functools
import re
import shutil

import ffmpeg
import trio

from hubruntime.redact import redact

__all__ = [
    "FFmpegNotFound",
    "REASONS",
    "classify_failure",
    "find_ffmpeg",
    "find_ffprobe",
    "probe_version",
    "reader_command",
]

#: Every reason :func:`classify_failure` can return.
REASONS = ("refused", "timeout", "dns", "unauthorized", "not_found", "protocol", "closed")

#: Values FFmpeg's ``-rtsp_transport`` accepts (one of its flags; we never combine them).
TRANSPORTS = ("tcp", "udp", "udp_multicast", "http", "https")

MESSAGE_MAX = 300

# Small probing. Measured against a live H.264 640x360 + AAC camera (GStreamer, 1 s GOP), from
# process start to the first packet reaching the hub: default probing ~1.3-1.45 s (FFmpeg waits
# for a decoded keyframe), these values ~0.32-0.50 s, and FFmpeg still reported both streams in
# full (h264 640x360 25 fps, aac 48 kHz mono): the codec parameters come from the SDP, the
# probed packets only have to confirm them. The one cost is a warning "not enough frames to
# estimate rate", hidden at -loglevel error. Risk, not measured: a camera whose SDP has no
# sprop-parameter-sets and whose SPS does not arrive within 200 ms fails with "dimensions not
# set"; that is classified "protocol" so it shows, and the restart usually joins at a keyframe.
ANALYZE_DURATION_US = 200_000
PROBE_SIZE_BYTES = 32_768


class FFmpegNotFound(RuntimeError):
    """Neither PATH nor imageio-ffmpeg provides an ``ffmpeg`` binary."""


@functools.cache
def find_ffmpeg() -> str:
    """Path of the ``ffmpeg`` binary: PATH first, else the one bundled with imageio-ffmpeg.

    PATH wins because a distribution's build is the one operators update and know; the
    imageio-ffmpeg wheel is the fallback that makes a bare ``pip install`` work. The result is
    cached (one lookup per process); a failure is not, so installing FFmpeg later is seen.
    """
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError, OSError) as exc:
        raise FFmpegNotFound(
            f"ffmpeg not found: not on PATH and imageio-ffmpeg has none ({exc}); install "
            "FFmpeg (Debian: apt-get install ffmpeg) or the imageio-ffmpeg wheel"
        ) from exc
    if not exe:
        raise FFmpegNotFound("ffmpeg not found: not on PATH and imageio-ffmpeg returned nothing")
    return exe


@functools.cache
def find_ffprobe() -> str | None:
    """Path of ``ffprobe`` on PATH, or None: imageio-ffmpeg ships no ffprobe, so callers must
    cope without it (``ffmpeg -i`` gives the same stream list on stderr)."""
    return shutil.which("ffprobe")


def reader_command(
    camera_url: str,
    publish_url: str,
    *,
    timeout_secs: float = 5.0,
    transport: str = "tcp",
) -> list[str]:
    """The FFmpeg command that reads ``camera_url`` and republishes it, unchanged, to the hub.

    ``camera_url`` is passed as given, credentials included, since FFmpeg needs them: the list
    must never be logged as is; log ``redact(" ".join(cmd))``. FFmpeg 5.0 or later is required:
    in 4.x, ``-timeout`` on RTSP input was the wait for an *incoming* connection (today's
    ``-listen_timeout``) and implied listen mode, so the reader would wait for the camera to call.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if not timeout_secs > 0:
        raise ValueError(f"timeout_secs must be positive, not {timeout_secs!r}")
    camera = ffmpeg.input(
        camera_url,
        # TCP interleaving by default: no UDP ports to open through NATs and firewalls, no loss
        # or reordering, and FFmpeg then keeps no jitter buffer ("jitter buffer size 0").
        rtsp_transport=transport,
        # Socket I/O timeout in µs for connect and every read. FFmpeg 5.1 and 9.0 both know only
        # -timeout here (both reject -stimeout: "Unrecognized option"). Without it a dead camera
        # hangs the reader forever; with -timeout 1 s a camera stalled while playing ended the
        # reader 2.2 s into the stall, exit 0, "<url>: Connection timed out" (5.1) or "Error
        # during demuxing: Connection timed out" (9.0).
        timeout=str(round(timeout_secs * 1_000_000)),
        # Small probing: see ANALYZE_DURATION_US. Not -fflags nobuffer: it discards the packets
        # read while probing, the keyframe among them, so video then waits for the next keyframe
        # (measured: first video packet at ~1.2-1.3 s instead of ~0.35 s, one GOP later).
        analyzeduration=ANALYZE_DURATION_US,
        probesize=PROBE_SIZE_BYTES,
    )
    out = ffmpeg.output(
        # Every video and audio stream, each optional ("?": an audio-less camera is fine). Not
        # -map 0: a camera that also announces an ONVIF metadata track makes the RTP muxer fail
        # at start ("Unsupported codec none", exit 1), so the reader would never run.
        camera["v?"],
        camera["a?"],
        publish_url,
        # Copy, never transcode: the hub must see the camera's own packets and timing, and a
        # reader costs almost no CPU.
        c="copy",
        # Publish over RTSP (ANNOUNCE/RECORD) to the hub's loopback endpoint, interleaved on TCP
        # so that nothing is lost between FFmpeg and the hub.
        f="rtsp",
        rtsp_transport="tcp",
        # 1 µs: write each packet as soon as it arrives instead of waiting to interleave
        # streams. The value 0 does NOT mean "no wait": it means "wait for a packet of every
        # stream, without limit" (the default waits up to 10 s). Measured: with a 5 s hole in
        # the audio, 0 and the default both held video back for 5.0 s; 1 µs kept video gaps
        # at 46 ms. Nor is audio held until the first video keyframe (when probing had not kept
        # one, audio left ~0.8 s before video).
        max_interleave_delta=1,
        # No RTP aggregation: with the default 0.7 s the RTP muxer packs several AAC frames per
        # packet (measured: one audio packet every ~171 ms); with 0 each frame leaves at once
        # (~21 ms apart). -muxpreload 0 was tried as well and changed nothing for RTP, so it is
        # left out.
        muxdelay=0,
    )
    return (
        out.global_args(
            "-hide_banner",  # no build banner: stderr is read for failures only
            "-nostdin",  # never read the supervisor's stdin (nor stop on a stray "q")
            # error, not warning: every failure this module classifies is printed at error
            # level, while warning adds per-start noise ("not enough frames to estimate rate")
            # and per-camera noise (non-monotonous DTS, missed RTP packets) without bound.
            "-loglevel",
            "error",
        )
        .overwrite_output()  # -y: an RTSP output is not a file, but never let FFmpeg ask
        .compile(cmd=find_ffmpeg())
    )


async def probe_version(*, timeout_secs: float = 10.0) -> str:
    """First line of ``ffmpeg -version`` (e.g. ``ffmpeg version 5.1.9-0+deb12u1 ...``).

    For diagnostics and bug reports: behaviour differs between versions (exit codes, message
    wording), so the version belongs next to any reader failure someone investigates.
    """
    with trio.fail_after(timeout_secs):
        proc = await trio.run_process(
            [find_ffmpeg(), "-hide_banner", "-version"], capture_stdout=True, capture_stderr=True
        )
    lines = proc.stdout.decode("utf-8", "replace").splitlines()
    return lines[0].strip() if lines else ""


# --- failure classification ------------------------------------------------------------------
#
# Samples observed (Debian FFmpeg 5.1.9; 9.0.2 differs only in prefixes and an extra summary):
#   refused     "[tcp @ 0x…] Connection to tcp://127.0.0.1:1?timeout=… failed: Connection refused"
#               "rtsp://127.0.0.1:1/x: Connection refused"                         exit 1 (9.0: 145)
#   timeout     "… failed: Connection timed out" (SYN unanswered), exit 1; a stall after PLAY:
#               "rtsp://…/x: Connection timed out", exit 0 (9.0: "[in#0/rtsp @ …] Error during
#               demuxing: Connection timed out")
#   dns         "[tcp @ 0x…] Failed to resolve hostname cam.invalid: Name or service not known"
#               "rtsp://cam.invalid/x: Input/output error"
#   4xx         "[rtsp @ 0x…] method OPTIONS failed: 404 Not Found" (9.0: "404 (Not Found)")
#               "rtsp://…: Server returned 404 Not Found" / "401 Unauthorized (authorization
#               failed)" / "403 Forbidden (access denied)" / "4XX Client Error, but not one of
#               40{0,1,3,4}" (461 Unsupported Transport) / "5XX Server Error reply" (500, 503)
#   protocol    "rtsp://…: Invalid data found when processing input" for a garbage answer, an
#               HTTP answer, a peer that closes at once, AND a peer that accepts but never
#               answers (no "timed out" text at all, even at -loglevel verbose): text alone
#               cannot tell a silent peer from a garbage one; "[rtsp @ 0x…] Nonmatching
#               transport in server reply"; "foo://bar: Protocol not found"
#   closed      camera gone mid-stream: exit 0, no text; our SIGTERM: exit 255, no text; SIGKILL
#   publish     (the hub's endpoint, not the camera) "Could not write header for output file #0
#               (incorrect codec parameters ?): Connection refused" / "method ANNOUNCE failed:
#               404 Not Found"; hub gone mid-stream: "av_interleaved_write_frame(): Broken pipe",
#               "Error writing trailer of rtsp://…: Broken pipe" (9.0: "Error submitting a packet
#               to the muxer", "Error muxing a packet")

# "[tcp @ 0x55…] ", "[in#0/rtsp @ 0x55…] ", "[aost#0:1/copy @ 0x55…] ": who spoke, not what.
_CONTEXT_PREFIX = re.compile(r"^(?:\[[^\]]*@ ?0x[0-9a-fA-F]+\]\s*)+")
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")
# FFmpeg accepts a raw "@" inside the password (it splits at the last "@" before the path),
# which redact() would cut at the first "@"; this greedy form removes all of it first.
_GREEDY_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")
# "tcp://127.0.0.1:1?timeout=5000000": the query is our own option, noise in a message.
_TCP_QUERY = re.compile(r"(?P<url>\btcp://[^\s?]+)\?\S*")


def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


# Codec parameters the republishing cannot do without: the camera's stream is the problem.
_UNUSABLE_STREAM = _rx(
    r"dimensions not set",
    r"Could not find codec parameters",
    r"Unsupported codec",
)
# The output side (the hub's own endpoint) failed: not the camera's fault.
_PUBLISH_SIDE = _rx(
    r"Could not write header",
    r"Error initializing output stream",
    r"Error writing trailer",
    r"av_interleaved_write_frame\(\)",
    r"Error submitting a packet to the muxer",
    r"Error muxing a packet",
    r"method (?:ANNOUNCE|RECORD) failed",
)
# Checked in this order; the first rule with a matching line wins. Lines are matched with their
# URLs removed, so that a path such as /Forbidden or a port such as :404 cannot fool a rule.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "dns",
        _rx(
            r"Failed to resolve hostname",
            r"Name or service not known",  # glibc EAI_NONAME
            r"Temporary failure in name resolution",  # glibc EAI_AGAIN
            r"No address associated with hostname",  # glibc EAI_NODATA
            r"nodename nor servname",  # BSD/macOS
            r"Name does not resolve",  # musl
            r"No such host is known",  # Windows
        ),
    ),
    (
        "unauthorized",
        _rx(
            r"failed: 40[13]\b",  # "method DESCRIBE failed: 401 <any reason phrase>"
            r"\b40[13]\b\W*(?:Unauthorized|Forbidden)",
            r"authorization failed",
            r"access denied",
        ),
    ),
    ("not_found", _rx(r"failed: 404\b", r"\b404\b\W*Not Found")),
    ("refused", _rx(r"Connection refused")),
    # "No route to host"/"unreachable" mean nobody answers at that address: a camera that is
    # off, like an unanswered SYN, so they count as a timeout rather than a refusal.
    ("timeout", _rx(r"timed out", r"No route to host", r"(?:Network|Host) is unreachable")),
    (
        "protocol",
        _rx(
            r"Invalid data found when processing input",
            r"Protocol not found",
            r"[Nn]onmatching transport",
            r"Unsupported [Tt]ransport",
            r"method \w+ failed",  # any other RTSP status, e.g. "500 Internal Server Error"
            r"Server returned",  # "5XX Server Error reply", "4XX Client Error, …", "400 …"
            r"RTSP Version not supported",
        ),
    ),
)
# Endings that are not connection errors: the reading simply stopped.
_CLOSED = _rx(
    r"End of file",
    r"Connection reset by peer",
    r"Broken pipe",
    r"Immediate exit requested",
    r"Exiting normally",
)
# Lines that never tell anything on their own.
_NOISE = _rx(
    r"^Last message repeated",
    r"^Error initializing output stream \S+ --\s*$",
    r"^Did you mean file:",
    r"^Consider increasing the value",
    r"^Error opening input file \S+\.$",  # 9.0: names the URL, says nothing of why
    r"^Terminating thread with return code",
    r"^Task finished with error code",
)


def _scrub(text: str) -> str:
    """Remove credentials from ``text``: redact() plus the raw-"@"-in-password case."""
    return redact(_GREEDY_USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text))


def _shorten(line: str) -> str:
    line = _scrub(_TCP_QUERY.sub(r"\g<url>", _CONTEXT_PREFIX.sub("", line).strip()))
    return line if len(line) <= MESSAGE_MAX else line[: MESSAGE_MAX - 1] + "…"


def _first(lines: list[tuple[str, str]], pattern: re.Pattern[str]) -> str | None:
    """The first raw line whose URL-less text matches ``pattern``."""
    for raw, bare in lines:
        if pattern.search(bare):
            return raw
    return None


def _ending(returncode: int | None) -> str:
    if returncode is None:
        return "reader still running"
    if returncode < 0:
        return f"reader killed by signal {-returncode}"
    if returncode == 255:  # FFmpeg's exit status after SIGTERM/SIGINT
        return "reader stopped by a signal (exit 255)"
    if returncode == 0:
        return "reader ended without an error"
    return f"reader exited with status {returncode}"


def classify_failure(returncode: int | None, stderr: str) -> tuple[str, str]:
    """Why a reader ended, from its exit status and stderr: ``(reason, message)``.

    ``reason`` is one of :data:`REASONS`; ``closed`` means no connection error is visible (exit
    0 after the camera went away, our own signal, a failure on the hub's publishing side).
    Only the text is read: whether a packet ever arrived, and how long the reader ran, are
    known to the supervisor alone, which therefore decides between "unreachable" and "closed".
    In particular a peer that accepts TCP and never answers looks exactly like one that
    answers garbage ("Invalid data found when processing input"), so both are ``protocol``.

    ``message`` is the most telling stderr line without FFmpeg's ``[tcp @ 0x…]`` prefix,
    credentials removed, at most ~300 characters: fit for logs and events.
    """
    lines = []
    for raw in stderr.splitlines():
        text = _CONTEXT_PREFIX.sub("", raw).strip()
        if text and not _NOISE.search(text):
            lines.append((text, _URL.sub("<url>", text)))

    line = _first(lines, _UNUSABLE_STREAM)
    if line is not None:
        return "protocol", _shorten(line)

    if _first(lines, _PUBLISH_SIDE) is not None:
        # Checked before the connection rules: "Connection refused" from the hub's endpoint
        # must not be reported as the camera refusing.
        detail = None
        for _, rule in _RULES:
            detail = _first(lines, rule)
            if detail is not None:
                break
        detail = detail or _first(lines, _CLOSED) or _first(lines, _PUBLISH_SIDE)
        return "closed", _shorten(f"publishing to the hub failed: {detail}")

    for reason, rule in _RULES:
        line = _first(lines, rule)
        if line is not None:
            return reason, _shorten(line)

    line = _first(lines, _CLOSED)
    if line is None and lines:
        line = lines[-1][0]
    ending = _ending(returncode)
    return "closed", _shorten(f"{ending}: {line}" if line else ending)
