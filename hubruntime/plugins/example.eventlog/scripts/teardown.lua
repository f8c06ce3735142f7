local cameras = require("cameras")
if subscription then
    cameras.unsubscribe(subscription)
end
require("logging").info("event logger stopped")
