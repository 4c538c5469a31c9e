-- N concurrent sleeps with random deadlines (seeded, in [0, 1) s): checks they wake in
-- deadline order and reports the wall time.  Run: build/tide sleeps.lua [N]
-- A task's deadline is (clock read inside tide.sleep) + d. Tasks run one at a time, so
-- that read lies between the task's own tide.time() just before and the next task's
-- read: `ordered` means no task woke before one whose deadline was surely earlier.
local tide = require "tide"
local N = math.tointeger(tonumber(arg[1] or 1000000))
math.randomseed(42)

local d, lo, hi, woke, n, prev = {}, {}, {}, {}, 0, nil

local function sleeper(i)
  local now = tide.time()
  lo[i] = now
  if prev then hi[prev] = now end
  prev = i
  tide.sleep(d[i])
  n = n + 1
  woke[n] = i
  hi[i] = hi[i] or tide.time() - d[i] -- the last to start: woke at or after its deadline
end

for i = 1, N do d[i] = math.random() end
local t0 = tide.time()
local ts = {}
for i = 1, N do ts[i] = tide.spawn(sleeper, i) end
tide.gather(ts)
local dt = tide.time() - t0

local ordered, latest = n == N, -math.huge -- latest: the largest sure-earliest deadline so far
for k = 1, n do
  local i = woke[k]
  if hi[i] + d[i] + 1e-6 < latest then ordered = false break end
  latest = math.max(latest, lo[i] + d[i])
end
print(("RESULT name=sleeps impl=tide n=%d seconds=%.3f ordered=%s"):format(N, dt, ordered))
