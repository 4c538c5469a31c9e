-- N keep-alive GETs of URL with C concurrent requests: one tide.http session
-- (max_per_host = C, connections reused), C worker tasks taking requests from a shared
-- counter, each reading the body.  Run: build/tide http_get.lua URL [N] [C]
local tide = require "tide"
local http = require "tide.http"
local URL = assert(arg[1], "usage: http_get.lua URL [N] [C]")
local N = math.tointeger(tonumber(arg[2] or 50000))
local C = math.tointeger(tonumber(arg[3] or 100))

local s = http.session{max_per_host = C}
local started, bad, bytes = 0, 0, 0

local function worker()
  while started < N do
    started = started + 1
    local res = s:get(URL)
    bytes = bytes + #res.body
    if res.status ~= 200 then bad = bad + 1 end
  end
end

local t0 = tide.time()
local ws = {}
for i = 1, C do ws[i] = tide.spawn(worker) end
tide.gather(ws)
local dt = tide.time() - t0
s:close()
if bad > 0 then error(("%d of %d responses were not 200"):format(bad, N)) end
print(("RESULT name=http_get impl=tide n=%d c=%d seconds=%.3f rps=%.0f bytes=%d"):format(N, C, dt, N / dt, bytes))
