#!/usr/bin/python3
"""A fake IP camera: GStreamer's RTSP server (gst-rtsp-server) serving a live test source.

Not this project's RTSP code: a peer to test the hub against. Run it with the *system* python
(``/usr/bin/python3``, Debian's ``python3-gi``); tools/peers/install-debian.sh installs what it
needs.

    /usr/bin/python3 tools/peers/gst_rtsp_camera.py --port 0 --path cam [--user U --password P]

Once listening it prints exactly one line to stdout, ``rtsp://127.0.0.1:<port>/<path>``, then
serves until SIGTERM/SIGINT and exits 0. A port that cannot be bound gives a message on stderr
and exit code 1; a missing GStreamer package gives exit code 2.

The stream: videotestsrc (is-live) -> x264enc (zerolatency) -> RTP H.264 as ``pay0``, and unless
``--no-audio`` audiotestsrc (is-live) -> AAC (avenc_aac, voaacenc, faac or fdkaacenc, the first
present) -> RTP MPEG4-GENERIC as ``pay1``, or PCMA (G.711 A-law, 8 kHz) if no AAC encoder exists.
The media is shared between clients, over RTP/AVP (UDP unicast) and RTP/AVP/TCP (interleaved);
RTSP and RTP/RTCP sockets are bound to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import signal
import sys

HOST = "127.0.0.1"
ROLE = "viewer"
AAC_ENCODERS = ("avenc_aac", "voaacenc", "faac", "fdkaacenc")


def _exit_now(signum, _frame) -> None:
    # SIGTERM/SIGINT before the main loop runs: still a clean exit 0 (GLib takes over later).
    sys.exit(0)


signal.signal(signal.SIGTERM, _exit_now)
signal.signal(signal.SIGINT, _exit_now)


def _die(message: str, code: int) -> None:
    print(f"gst_rtsp_camera: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer
except (ImportError, ValueError) as exc:  # ValueError: typelib not installed
    _die(f"GStreamer RTSP server bindings missing ({exc}); run tools/peers/install-debian.sh "
         "and use /usr/bin/python3", 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8554, help="RTSP port on 127.0.0.1; 0 = any free")
    p.add_argument("--path", default="cam", help="mount path (default: cam)")
    p.add_argument("--user", help="require this user name (needs --password)")
    p.add_argument("--password", help="password for --user")
    # One scheme only: GstRTSPAuthMethod is an enum in the typelib, so PyGObject refuses
    # BASIC|DIGEST (ValueError: invalid enum value: 3).
    p.add_argument("--auth", choices=("digest", "basic"), default="digest",
                   help="authentication scheme when --user is given (default: digest)")
    p.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True,
                   help="add an audio stream (default: on)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--gop", type=int, default=25,
                   help="key-frame interval in frames (x264enc key-int-max; default 25)")
    p.add_argument("--bitrate", type=int, default=1500, help="video bitrate in kbit/s")
    p.add_argument("--verbose", action="store_true", help="log client connections to stderr")
    args = p.parse_args(argv)
    if (args.user is None) != (args.password is None):
        p.error("--user and --password go together")
    if not 0 <= args.port <= 65535:
        p.error("--port must be 0..65535")
    args.path = args.path.strip("/")
    if not args.path:
        p.error("--path must not be empty")
    return args


def audio_branch() -> tuple[str, str]:
    """Launch-line fragment for the audio stream and a name for what it uses."""
    for name in AAC_ENCODERS:
        if Gst.ElementFactory.find(name) is not None:
            return (
                "audiotestsrc is-live=true wave=sine freq=440 volume=0.3 "
                "! audio/x-raw,rate=48000,channels=1 ! audioconvert ! audioresample "
                f"! {name} bitrate=64000 ! aacparse "
                "! rtpmp4gpay name=pay1 pt=97",
                f"AAC ({name})",
            )
    return (
        "audiotestsrc is-live=true wave=sine freq=440 volume=0.3 "
        "! audio/x-raw,rate=8000,channels=1 ! audioconvert ! audioresample ! alawenc "
        "! rtppcmapay name=pay1 pt=8",
        "PCMA (no AAC encoder found)",
    )


def launch_line(args: argparse.Namespace) -> tuple[str, str]:
    video = (
        "videotestsrc is-live=true pattern=smpte horizontal-speed=4 "
        f"! video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 "
        "! videoconvert "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.gop} "
        f"bitrate={args.bitrate} "
        "! video/x-h264,profile=constrained-baseline "
        "! rtph264pay name=pay0 pt=96 config-interval=1"
    )
    if not args.audio:
        return f"( {video} )", "none"
    audio, audio_desc = audio_branch()
    return f"( {video}  {audio} )", audio_desc


def check_elements(line: str) -> None:
    """Exit 2 naming any element of the launch line that this machine lacks."""
    names = set()
    for segment in line.replace("(", "!").replace(")", "!").split("!"):
        words = [w for w in segment.split() if "=" not in w and "/" not in w]
        names.update(words)  # element names; caps (x/y,...) and properties (a=b) are skipped
    missing = sorted(n for n in names if Gst.ElementFactory.find(n) is None)
    if missing:
        _die(f"GStreamer elements missing: {', '.join(missing)}; "
             "run tools/peers/install-debian.sh", 2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Gst.init(None)
    line, audio_desc = launch_line(args)
    check_elements(line)

    server = GstRtspServer.RTSPServer()
    server.set_address(HOST)
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(line)
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.TCP)
    # RTP/RTCP over UDP: unicast ports from a pool on 127.0.0.1 (otherwise bound to 0.0.0.0 + ::).
    pool = GstRtspServer.RTSPAddressPool()
    if not pool.add_range(HOST, HOST, 20000, 60000, 0):
        _die("could not set up the UDP address pool", 1)
    factory.set_address_pool(pool)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()  # new_empty(); new() is varargs, not bound
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
        if args.auth == "basic":
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        else:
            auth.add_digest(args.user, args.password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        server.set_auth(auth)
        # The role is a GstStructure name, so it is a fixed word, not the user name.
        factory.add_role_from_structure(Gst.Structure.new_from_string(
            f"{ROLE}, "
            f"{GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS}=(boolean)true, "
            f"{GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT}=(boolean)true"))

    server.get_mount_points().add_factory(f"/{args.path}", factory)

    if args.verbose:
        def on_client(_server, client):
            conn = client.get_connection()
            print(f"gst_rtsp_camera: client {conn.get_ip() if conn else '?'} connected",
                  file=sys.stderr, flush=True)
        server.connect("client-connected", on_client)

    loop = GLib.MainLoop()
    try:
        # create_source raises GLib.Error (attach() just returns 0 on a taken port).
        source = server.create_source(None)
    except GLib.Error as exc:
        _die(f"cannot listen on {HOST}:{args.port}: {exc.message}", 1)
    source.attach(None)
    port = server.get_bound_port()
    if port <= 0:
        _die(f"cannot listen on {HOST}:{args.port}", 1)

    def stop(*_a) -> bool:
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, stop)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, stop)

    if args.verbose:
        print(f"gst_rtsp_camera: audio {audio_desc}; launch {line}", file=sys.stderr, flush=True)
    sys.stdout.write(f"rtsp://{HOST}:{port}/{args.path}\n")
    sys.stdout.flush()
    loop.run()
    source.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
