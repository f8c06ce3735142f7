local storage = require("storage")
local logging = require("logging")

for key in pairs(storage.get_table("streams") or {}) do
    local counts = storage.get_table(key) or {}
    local parts = {}
    for event, n in pairs(counts) do
        parts[#parts + 1] = event .. "=" .. n
    end
    table.sort(parts)
    logging.info(key .. ": " .. table.concat(parts, ", "))
end
