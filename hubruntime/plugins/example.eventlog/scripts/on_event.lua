-- One line per event: its name, its stream, and the whole table as JSON.
local params = ...
local logging = require("logging")
local json = require("json")

local where = params.streamId and (" on " .. params.streamId) or ""
if params.event == "camera_unreachable" or params.event == "camera_stream_closed" then
    logging.warning(params.event .. where .. ": " .. json.encode(params))
else
    logging.info(params.event .. where .. ": " .. json.encode(params))
end
