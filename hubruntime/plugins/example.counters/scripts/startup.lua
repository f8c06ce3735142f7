local cameras = require("cameras")
local timer = require("timer")

cameras.subscribe("HUB:example.counters/scripts/count")
-- a summary every minute; the counters live in storage, so they survive hub restarts
timer.set_interval(60000, "HUB:example.counters/scripts/summary")
