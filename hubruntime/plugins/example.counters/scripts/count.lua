-- Keep counters[streamId][event] in storage (one table per stream).
local params = ...
local storage = require("storage")
local logging = require("logging")

local key = "counts:" .. (params.streamId or "hub")
local counts = storage.get_table(key) or {}
counts[params.event] = (counts[params.event] or 0) + 1
storage.set_table(key, counts)

local streams = storage.get_table("streams") or {}
if not streams[key] then
    streams[key] = true
    storage.set_table("streams", streams)
end

if params.event == "camera_packet_delay" then
    logging.notice(string.format("%s: gap of %.2f s on %s (%d so far)", params.streamId,
        params.gapSecs or 0, params.track or "?", counts[params.event]))
end
