#!/usr/bin/python3
"""The peer relay for tools/bench/relay.py: GStreamer's RTSP server re-serving a camera.

Not this project's code: the reference the hub's re-publishing is compared with. Run it with
the *system* python (``/usr/bin/python3``, Debian's ``python3-gi``):

    /usr/bin/python3 tools/bench/gst_relay.py --camera rtsp://127.0.0.1:PORT/cam [--port 0]
        [--path relay] [--print-launch]

One shared media (``set_shared(True)``: one camera connection for every viewer) built from

    ( rtspsrc location=CAMERA protocols=tcp latency=0 buffer-mode=none name=src
      src. ! application/x-rtp,media=video ! rtph264depay ! rtph264pay name=pay0 pt=96
             config-interval=1 mtu=MTU
      src. ! application/x-rtp,media=audio ! rtpmp4gdepay ! rtpmp4gpay name=pay1 pt=97 mtu=MTU )

which relays H.264 + AAC (RTP MPEG4-GENERIC) without transcoding: depayload to access units,
payload again. The caps filters after ``src.`` pick which of rtspsrc's dynamic pads goes to
which depayloader. ``--no-audio`` drops the audio branch. RTSP and RTP are on 127.0.0.1, viewers
over RTP/AVP/TCP (interleaved) only, like the benchmark's viewers.

Once listening it prints exactly one line to stdout, ``rtsp://127.0.0.1:<port>/<path>``, then
serves until SIGTERM/SIGINT and exits 0. Exit 1 if the port cannot be bound, 2 if GStreamer or
an element is missing.
"""

from __future__ import annotations

import argparse
import signal
import sys

HOST = "127.0.0.1"


def _exit_now(signum, _frame) -> None:
    sys.exit(0)


signal.signal(signal.SIGTERM, _exit_now)
signal.signal(signal.SIGINT, _exit_now)


def _die(message: str, code: int) -> None:
    print(f"gst_relay: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer
except (ImportError, ValueError) as exc:
    _die(f"GStreamer RTSP server bindings missing ({exc}); use /usr/bin/python3 and "
         "tools/peers/install-debian.sh", 2)

ELEMENTS = ("rtspsrc", "rtph264depay", "rtph264pay", "rtpmp4gdepay", "rtpmp4gpay")


def launch_line(camera: str, audio: bool, mtu: int, src_props: str = "") -> str:
    video = (f"src. ! application/x-rtp,media=video ! rtph264depay "
             f"! rtph264pay name=pay0 pt=96 config-interval=1 mtu={mtu}")
    props = f" {src_props.strip()}" if src_props.strip() else ""
    line = f"rtspsrc location={camera} protocols=tcp latency=0{props} name=src  {video}"
    if audio:
        line += (f"  src. ! application/x-rtp,media=audio ! rtpmp4gdepay "
                 f"! rtpmp4gpay name=pay1 pt=97 mtu={mtu}")
    return f"( {line} )"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--camera", required=True, help="RTSP URL of the camera to relay")
    p.add_argument("--port", type=int, default=0, help="RTSP port on 127.0.0.1 (0: any free)")
    p.add_argument("--path", default="relay", help="mount path (default: relay)")
    p.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True)
    # FFmpeg's RTP muxer (which made the camera's packets and the hub's) sends up to 1472-byte
    # packets on RTSP/TCP; rtph264pay's default MTU is 1400. The same size keeps the packet
    # rates, hence the per-packet costs, comparable.
    p.add_argument("--mtu", type=int, default=1472, help="RTP packet size (default 1472)")
    # buffer-mode=none: rtspsrc's jitterbuffer then timestamps packets on arrival instead of
    # slaving them to the sender's clock (the default, "auto" = slave for a live source), which
    # measured here at ~22 ms added latency instead of ~7 ms. Over TCP there is no reordering to
    # absorb, so this is the low-latency configuration one would pick; "" gives the defaults.
    p.add_argument("--src-props", default="buffer-mode=none", metavar="PROPS",
                   help="more rtspsrc properties (default 'buffer-mode=none'; '' for none)")
    p.add_argument("--print-launch", action="store_true", help="print the launch line on stderr")
    args = p.parse_args(argv)

    Gst.init(None)
    missing = [e for e in ELEMENTS if Gst.ElementFactory.find(e) is None]
    if missing:
        _die(f"GStreamer elements missing: {', '.join(missing)}", 2)
    line = launch_line(args.camera, args.audio, args.mtu, args.src_props)
    if args.print_launch:
        print(f"gst_relay: launch {line}", file=sys.stderr, flush=True)

    server = GstRtspServer.RTSPServer()
    server.set_address(HOST)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(line)
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
    server.get_mount_points().add_factory(f"/{args.path.strip('/')}", factory)

    loop = GLib.MainLoop()
    try:
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
    sys.stdout.write(f"rtsp://{HOST}:{port}/{args.path.strip('/')}\n")
    sys.stdout.flush()
    loop.run()
    source.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
