-- wrk script: POST a 1 KiB JSON body.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local pad = string.rep("x", 1024 - 40)
wrk.body = '{"event":"lead.scored","pad":"' .. pad .. '"}'
-- With BENCH_BODY set (handoff.sh), that file's bytes instead.
local path = os.getenv("BENCH_BODY")
if path and path ~= "" then
  local f = assert(io.open(path, "rb"))
  wrk.body = f:read("*a")
  f:close()
end
-- With TIDEGATE_BENCH_TOKEN set (producer-tokens.sh), send it as a bearer token.
local token = os.getenv("TIDEGATE_BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
-- With BENCH_KEYS set (ordering.sh), each request carries X-Ordering-Key,
-- cycling through that many keys.
local keys = tonumber(os.getenv("BENCH_KEYS") or "")
if keys then
  local n = 0
  request = function()
    n = n + 1
    wrk.headers["X-Ordering-Key"] = "k" .. (n % keys)
    return wrk.format()
  end
end
