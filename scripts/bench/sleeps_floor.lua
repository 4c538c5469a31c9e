-- The floor under the concurrent-sleeps benchmark: what N bare Lua coroutines cost,
-- with no event loop and no timers. Each is created, started, parks in
-- coroutine.yield, and is resumed once in deadline order (the order is sorted
-- before the clock starts: ordering is not counted).  Run: lua5.4 sleeps_floor.lua [N]
local N = math.tointeger(tonumber(arg[1] or 1000000))
math.randomseed(42)
local d, order = {}, {}
for i = 1, N do d[i], order[i] = math.random(), i end
table.sort(order, function(a, b) return d[a] < d[b] end)

local n, woke = 0, {}
local function sleeper(i)
  coroutine.yield()
  n = n + 1
  woke[n] = i
end

local t0 = os.clock()
local cos = {}
for i = 1, N do
  local co = coroutine.create(sleeper)
  coroutine.resume(co, i)
  cos[i] = co
end
for k = 1, N do
  local i = order[k]
  coroutine.resume(cos[i])
  cos[i] = nil
end
local dt = os.clock() - t0
assert(n == N)
print(("RESULT name=sleeps impl=lua5.4 n=%d seconds=%.3f"):format(N, dt))
