-- Latency overhead: N GETs of URL (the delay server's /delay, 100 ms each), at most C in
-- flight through tide.Semaphore(C), each task doing http.get(url).
-- Ideal: ceil(N / C) * 0.1 s.  Run: build/tide http_latency.lua URL N C
local tide = require "tide"
local http = require "tide.http"
local URL = assert(arg[1], "usage: http_latency.lua URL N C")
local N = math.tointeger(tonumber(arg[2] or 100))
local C = math.tointeger(tonumber(arg[3] or 10))

local sem = tide.Semaphore(C)
local bad = 0

local function one()
  local g <close> = sem:acquire()
  local res = http.get(URL)
  if res.status ~= 200 then bad = bad + 1 end
end

local t0 = tide.time()
local ts = {}
for i = 1, N do ts[i] = tide.spawn(one) end
tide.gather(ts)
local dt = tide.time() - t0
if bad > 0 then error(("%d of %d responses were not 200"):format(bad, N)) end
print(("RESULT name=http_latency impl=tide n=%d c=%d seconds=%.3f"):format(N, C, dt))
