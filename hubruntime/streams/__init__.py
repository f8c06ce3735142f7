"""Camera streams: registry, supervisor, per-stream hub and health monitor."""
