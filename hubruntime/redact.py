"""Credential redaction for anything that may reach a log, an event or an API answer.

Camera URLs carry passwords (``rtsp://user:secret@cam/...``); DESIGN §3 says store them, never
show them. Every place that prints a URL or a message that might contain one goes through here.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s]*)@")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|pass|pwd|token|secret|key|auth)=)[^&\s]*")


def redact(text: str) -> str:
    """Replace ``user:pass@`` in every URL of ``text`` by ``***@``, secret query values by ***."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    return _QUERY_SECRET.sub(r"\1***", text)
