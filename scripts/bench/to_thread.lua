-- to_thread: J CPU-bound jobs (a prime sieve up to N each) run serially on the loop
-- thread, then through tide.to_thread on libuv's thread pool, while a ticker task
-- sleeps 1 ms at a time and records how late it woke (the loop's responsiveness).
-- Run: build/tide scripts/bench/to_thread.lua [J=4] [N=4000000]   (REPEAT=3 runs each)
-- Prints RESULT with the threaded time in seconds=, the serial time, the speedup
-- (bounded by the core count and by UV_THREADPOOL_SIZE - 1, the jobs tide runs
-- at once: the tide command's pool is cores + 4) and the ticker's worst and 99th-percentile delay, next to its worst
-- delay with nothing else running (the machine's noise floor). Also prints the
-- machine's own ceiling for the speed-up: J tide processes sieving at once
-- against one alone (no shared state, no pool: what its cores give in
-- parallel; on a VM they need not be equal).
local tide = require "tide"
local process = require "tide.process"
local J = math.tointeger(tonumber(arg[1] or 4))
local N = math.tointeger(tonumber(arg[2] or 4000000))

-- Counts the primes up to n (no upvalues: it travels to the workers as bytecode).
-- Kept as source too: the processes of the ceiling run the same code.
local SIEVE = [[
return function(n)
  local composite, count = {}, 0
  for i = 2, n do
    if not composite[i] then
      count = count + 1
      for k = i * i, n, i do composite[k] = true end
    end
  end
  return count
end]]
local sieve = load(SIEVE)()

-- Runs fn while a ticker sleeps 1 ms in a loop; returns fn's wall time (s), the
-- worst lateness of a wake-up (s), the number of ticks and the 99th percentile.
local function with_ticker(fn)
  local stop, late = false, {}
  local ticker = tide.spawn(function()
    while not stop do
      local due = tide.time() + 0.001
      tide.sleep(0.001)
      late[#late + 1] = tide.time() - due
    end
  end)
  tide.sleep(0.01) -- the ticker is running
  local t0 = tide.time()
  fn()
  local dt = tide.time() - t0
  stop = true
  ticker:await()
  table.sort(late)
  return dt, late[#late], #late, late[math.ceil(#late * 0.99)]
end

local expect = sieve(N)
local _, idle_worst = with_ticker(function() tide.sleep(0.5) end)

-- Each phase runs REPEAT times: the times are the best run's (the machine's
-- noise only ever adds), the ticker's delays the worst run's.
local REPEAT = math.tointeger(tonumber(os.getenv("REPEAT") or 3))
local serial, serial_worst = math.huge, 0
local threaded, worst, ticks, p99 = math.huge, 0, 0, 0
for _ = 1, REPEAT do
  local dt, w = with_ticker(function()
    for _ = 1, J do assert(sieve(N) == expect) end
  end)
  serial, serial_worst = math.min(serial, dt), math.max(serial_worst, w)
  -- The serial phase left its sieve tables (millions of entries) to the loop
  -- state's collector; marking one such table is a single GC step of many
  -- milliseconds. Collect them now so the threaded phase measures itself.
  collectgarbage()
  collectgarbage()
  local n, q
  dt, w, n, q = with_ticker(function()
    local jobs = {}
    for i = 1, J do jobs[i] = function() return tide.to_thread(sieve, N) end end
    for _, c in ipairs(tide.gather(jobs)) do assert(c == expect) end
  end)
  if dt < threaded then threaded, ticks = dt, n end
  worst, p99 = math.max(worst, w), math.max(p99, q)
end

-- The machine's ceiling: J processes at once against one alone, best of REPEAT.
local function processes(k)
  local t0, ps = tide.time(), {}
  for i = 1, k do
    ps[i] = function()
      local r = process.run({arg[-1], "-e", ("io.write((load(%q)())(%d))"):format(SIEVE, N)})
      assert(tonumber(r.stdout) == expect, r.stderr)
    end
  end
  tide.gather(ps)
  return tide.time() - t0
end
local one, all = math.huge, math.huge
for _ = 1, REPEAT do
  one, all = math.min(one, processes(1)), math.min(all, processes(J))
end
local ceiling = J * one / all

-- The same with jobs that allocate nothing (trial division): what is left of
-- the ticker's delay is then the loop's own, not the memory system's (the
-- sieves allocate hundreds of MB between them).
local function trial(n)
  local count = 0
  for i = 2, n do
    local prime = true
    for d = 2, math.floor(math.sqrt(i)) do
      if i % d == 0 then prime = false break end
    end
    if prime then count = count + 1 end
  end
  return count
end
collectgarbage()
local _, cpu_worst = with_ticker(function()
  local jobs = {}
  for i = 1, J do jobs[i] = function() return tide.to_thread(trial, 600000) end end
  tide.gather(jobs)
end)

print(("serial: %.3f s (loop blocked up to %.0f ms); to_thread: %.3f s, %d ticks, "
  .. "tick delay worst %.2f ms, p99 %.2f ms (worst %.2f ms with the loop idle)")
  :format(serial, serial_worst * 1e3, threaded, ticks, worst * 1e3, p99 * 1e3, idle_worst * 1e3))
print(("processes: one %.3f s, %d at once %.3f s: the machine's ceiling %.2fx")
  :format(one, J, all, ceiling))
print(("RESULT name=to_thread impl=tide n=%d seconds=%.3f serial_seconds=%.3f speedup=%.2f "
  .. "worst_tick_ms=%.2f p99_tick_ms=%.2f idle_tick_ms=%.2f cpu_worst_tick_ms=%.2f "
  .. "process_one_seconds=%.3f process_all_seconds=%.3f ceiling=%.2f")
  :format(J, threaded, serial, serial / threaded, worst * 1e3, p99 * 1e3, idle_worst * 1e3,
    cpu_worst * 1e3, one, all, ceiling))
