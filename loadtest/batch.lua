-- wrk script: POST /v1/entitlements:batch of 100 consecutive ids, the window moving
-- round robin over ids 1..1000 (the same members entitlement.lua reads one by one).
local start = 0
local headers = { ["Content-Type"] = "application/json" }
request = function()
  local ids = {}
  for i = 1, 100 do
    ids[i] = tostring((start + i - 1) % 1000 + 1)
  end
  start = (start + 100) % 1000
  return wrk.format("POST", "/v1/entitlements:batch", headers,
    '{"member_ids":[' .. table.concat(ids, ",") .. ']}')
end
