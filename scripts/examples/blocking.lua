-- blocking.lua: a blocking call made inside async code stalls every task;
-- the same call through tide.to_thread runs on a worker thread (in a Lua state
-- of its own) and the loop keeps going. A ticker task shows which is which.
-- Run: tide scripts/examples/blocking.lua
local tide = require "tide"

local ticks, worst = 0, 0
local function ticker()
  while true do
    local due = tide.time() + 0.1
    tide.sleep(0.1)
    worst = math.max(worst, tide.time() - due)
    ticks = ticks + 1
  end
end

-- The blocking call: sleeps the whole thread (like Python's time.sleep).
local function blocking_sleep(s)
  os.execute("sleep " .. s)
end

-- CPU-bound work. It has no upvalues, so it can travel to a worker state.
local function count_primes(n)
  local composite, count = {}, 0
  for i = 2, n - 1 do
    if not composite[i] then
      count = count + 1
      for k = i * i, n - 1, i do composite[k] = true end
    end
  end
  return count
end

local function main()
  local t = tide.spawn(ticker)
  tide.sleep(0.05)

  print("1. os.execute('sleep 0.5') called directly blocks the loop")
  local before = ticks
  blocking_sleep(0.5)
  print("   ticks meanwhile: " .. ticks - before)

  print("2. the same call through tide.to_thread")
  tide.sleep(0.15) -- the overdue tick fires, the ticker is back on time
  before = ticks
  tide.to_thread(blocking_sleep, 0.5)
  print("   ticks meanwhile: " .. ticks - before)

  print("3. a CPU-bound job through tide.to_thread")
  worst = 0
  local n = tide.to_thread(count_primes, 2000000)
  print("   primes below 2000000: " .. n)
  print("   the ticker was never more than 100 ms late: " .. tostring(worst < 0.1))

  t:cancel()
end

tide.run(main)
