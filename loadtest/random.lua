-- wrk script: GET /v1/members/{id}/entitlement, id uniform over 1..1,000,000 (each
-- thread seeds its own generator): the first benchmark a user runs, every lookup a
-- store read until L1 has seen the member.
local thread_seed = 0
setup = function(thread)
  thread_seed = thread_seed + 1
  thread:set("seed", thread_seed)
end
init = function(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end
request = function()
  return wrk.format("GET", "/v1/members/" .. math.random(1, 1000000) .. "/entitlement")
end
