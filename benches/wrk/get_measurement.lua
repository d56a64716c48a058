-- wrk script: GET /measurement/<key> over the 10,000 readings compare.sh
-- stores first (sensors g0..g99, one reading a second from 1700000000).
--
--   ENERGYGUARD_TOKEN=... wrk -t2 -c32 -d5s -s benches/wrk/get_measurement.lua http://127.0.0.1:8080

local token = os.getenv("ENERGYGUARD_TOKEN") or ""
local tail = " HTTP/1.1\r\nHost: energyguard\r\nAuthorization: Bearer " .. token .. "\r\n\r\n"
local counter = 0

function request()
  counter = counter + 1
  local n = counter % 10000
  return "GET /measurement/g" .. (n % 100) .. ":" .. (1700000000000 + n * 1000) .. tail
end
