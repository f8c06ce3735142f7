"""Sans-I/O protocol code: parsers and small state machines, no trio, no sockets, no clocks.

Why a separate package: everything here is pure (bytes and numbers in, values out), so it is
tested exhaustively with hand-built input and reused by the RTSP server, the stream hub, the
health monitor and the tools alike. It imports nothing else of ``hubruntime`` (DESIGN.md §2).
"""
