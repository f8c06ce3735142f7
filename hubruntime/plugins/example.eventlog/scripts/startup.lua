-- Subscribe once at start: every camera event then runs scripts/on_event.
local cameras = require("cameras")
local logging = require("logging")

subscription = cameras.subscribe("HUB:example.eventlog/scripts/on_event")
logging.info("event logger subscribed as " .. subscription)
