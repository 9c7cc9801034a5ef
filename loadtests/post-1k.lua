-- wrk script: POST a 1 KiB JSON body.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local pad = string.rep("x", 1024 - 40)
wrk.body = '{"event":"lead.scored","pad":"' .. pad .. '"}'
