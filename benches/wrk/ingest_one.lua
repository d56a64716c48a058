-- wrk script: single-reading POST /ingest, every request a new reading
-- (100 sensors, timestamps unique per thread). The request is its fixed
-- head plus the body, concatenated: wrk.format would rebuild every header
-- for each request, about 2 µs of the load generator's CPU per request on
-- the two cores it shares with the service.
--
--   ENERGYGUARD_TOKEN=... wrk -t2 -c128 -d5s -s benches/wrk/ingest_one.lua http://127.0.0.1:8080

local token = os.getenv("ENERGYGUARD_TOKEN") or ""
local head = "POST /ingest HTTP/1.1\r\nHost: energyguard\r\n"
  .. "Content-Type: application/json\r\n"
  .. "Authorization: Bearer " .. token .. "\r\n"
  .. "Content-Length: "
local counter = 0
local base = 0

function setup(thread)
  thread:set("base", math.random(1, 1000000) * 1000000)
end

function request()
  counter = counter + 1
  local n = base + counter
  local body = '{"sensor_id":"w' .. (n % 100) .. '","timestamp":' .. (1700000000000 + n)
    .. ',"value":1.5}'
  return head .. #body .. "\r\n\r\n" .. body
end
