-- RSS per parked task: N tasks all inside tide.sleep(1000).
-- Run: build/tide memory.lua [N]
local tide = require "tide"
local N = math.tointeger(tonumber(arg[1] or 100000))

local function rss() -- bytes, from VmRSS in /proc/self/status
  local f = assert(io.open("/proc/self/status"))
  local kb = f:read("a"):match("VmRSS:%s*(%d+)")
  f:close()
  return tonumber(kb) * 1024
end

local function parked() tide.sleep(1000) end

collectgarbage() collectgarbage()
local before = rss()
local ts = {}
for i = 1, N do ts[i] = tide.spawn(parked) end
tide.sleep(0) tide.sleep(0) -- every task has started and is parked in its sleep
collectgarbage() collectgarbage()
local after = rss()
print(("RESULT name=memory impl=tide n=%d bytes_per_task=%.0f"):format(N, (after - before) / N))
for i = 1, N do ts[i]:cancel() end
