-- wrk script: GET /v1/members/{id}/entitlement over ids 1..1000, round robin per thread.
local id = 0
request = function()
  id = id % 1000 + 1
  return wrk.format("GET", "/v1/members/" .. id .. "/entitlement")
end
