-- wrk script: one BIK status webhook per request (~700 bytes with callbackData), each with a
-- fresh message id so every request is a new message, as in production.
local counter = 0
-- WRK_TAG tells apart concurrent wrk processes: Lua's unseeded random gives each the same tag.
local thread_tag = (os.getenv("WRK_TAG") or "") .. tostring(math.random(1, 1e9))

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic " .. (os.getenv("BIK_KEY") or "change-me-bik-key")

local template = [[
[{"eventName":"message-status-update","eventInfo":{"messageId":"wamid.BENCH%s.%d","createdAt":"2026-11-21T10:00:02.000Z","channelId":"whatsapp","status":"delivered","message":"Your cart is waiting","owner":"DEV_API","ownerId":null,"assetValue":"+919090909090","failureReason":null,"callbackData":"{\"order_id\":\"ORD%d\",\"campaign\":\"%s\",\"source\":\"bench\"}"},"storeId":"store_42","customerDetails":{"customerId":12345678,"firstName":"John","lastName":"Doe"},"id":"bench-%s-%d"}]
]]

request = function()
  counter = counter + 1
  local campaign = (counter % 10 == 0) and "abandoned_cart" or "newsletter"
  local body = string.format(template, thread_tag, counter, counter, campaign, thread_tag, counter)
  return wrk.format(nil, "/webhooks/bik", nil, body)
end
