-- The floor for memory.lua: N bare coroutines (plain lua5.4), each resumed once
-- and suspended in coroutine.yield.  Run: lua5.4 memory_floor.lua [N]
local N = math.tointeger(tonumber(arg[1] or 100000))

local function rss() -- bytes, from VmRSS in /proc/self/status
  local f = assert(io.open("/proc/self/status"))
  local kb = f:read("a"):match("VmRSS:%s*(%d+)")
  f:close()
  return tonumber(kb) * 1024
end

local function parked() coroutine.yield() end

collectgarbage() collectgarbage()
local before = rss()
local cs = {}
for i = 1, N do
  cs[i] = coroutine.create(parked)
  assert(coroutine.resume(cs[i]))
end
collectgarbage() collectgarbage()
local after = rss()
print(("RESULT name=memory impl=lua5.4 n=%d bytes_per_task=%.0f"):format(N, (after - before) / N))
