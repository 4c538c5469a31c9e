-- spawn N no-op tasks and gather them.  Run: build/tide spawn_gather.lua [N]
local tide = require "tide"
local N = math.tointeger(tonumber(arg[1] or 1000000))

local function noop() end

local t0 = tide.time()
local ts = {}
for i = 1, N do ts[i] = tide.spawn(noop) end
tide.gather(ts)
local dt = tide.time() - t0
print(("RESULT name=spawn_gather impl=tide n=%d seconds=%.3f"):format(N, dt))
