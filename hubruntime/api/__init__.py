"""Client-facing interfaces: the HTTP API and the TCP backchannel server."""
