"""Framing between the hub and a plugin worker: 4-byte big-endian length, then one JSON value.

Sans-I/O: ``encode`` makes bytes, ``FrameDecoder`` turns received bytes into messages; the hub
(trio) and the worker (blocking socket) both drive it. JSON because the messages are small dicts
of plain data and the stdlib codec is C-fast; batching many events into one frame is what makes
100 k events/s possible, not the codec.

Messages (``t`` is the type):
- hub → worker: ``init`` {plugin, permissions, scripts{name: source}, startup, limits},
  ``batch`` {b, items: [[kind, ...]]} with kind ``e`` (event), ``s`` (script address, args),
  ``f`` (timer function id, args), ``t`` (subscriber id, event: for that subscriber only);
  ``ret`` {id, ok, v}; ``stop`` {teardown}.
- worker → hub: ``ready`` {errors, subs}, ``done`` {b, failed}, ``call`` {id, name, where, args},
  ``log`` {level, where, msg}, ``subs`` {n, new (the id subscribed, if one was), at ([batch,
  index] of the run that subscribed; batch 0 is startup)}, ``stopped`` {}.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20


class FrameError(ValueError):
    """The peer sent something that is not a frame; the connection cannot go on."""


def encode(message: Any) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return HEADER.pack(len(body)) + body


def encode_batch(batch_id: int, items: list[bytes]) -> bytes:
    """A ``batch`` frame from items already JSON-encoded (each event is encoded once for all
    plugins, not once per plugin)."""
    body = b'{"t":"batch","b":%d,"items":[%b]}' % (batch_id, b",".join(items))
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Accumulates bytes; ``feed`` returns the complete messages received so far."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > MAX_FRAME:
                raise FrameError(f"frame of {size} bytes is over the {MAX_FRAME} limit")
            if len(buf) - pos - 4 < size:
                break
            body = buf[pos + 4 : pos + 4 + size]  # json.loads takes the bytearray: one copy
            pos += 4 + size
            try:
                out.append(json.loads(body))
            except ValueError as exc:
                raise FrameError(f"frame is not JSON: {exc}") from exc
        if pos:
            del buf[:pos]
        return out
