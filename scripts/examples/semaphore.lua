-- semaphore.lua: 50 simulated requests (0.1 s each), at most 10 at a time.
-- 50 / 10 = 5 rounds of 0.1 s, so about 0.5 s in total.
-- Run: tide scripts/examples/semaphore.lua
local tide = require "tide"

local running, max_running = 0, 0

local function fetch_with_limit(n, sem)
  local guard <close> = sem:acquire() -- at most 10 inside at once
  running = running + 1
  if running > max_running then
    max_running = running
  end
  tide.sleep(0.1) -- stands in for the request
  running = running - 1
  return "response " .. n
end

local function main()
  local start = tide.time()
  local sem = tide.Semaphore(10) -- concurrency limit

  local tasks = {}
  for i = 0, 49 do
    tasks[#tasks + 1] = tide.spawn(fetch_with_limit, i, sem)
  end
  local results = tide.gather(tasks)

  print("Got " .. #results .. " responses")
  print("max concurrency: " .. max_running)
  print(string.format("elapsed: %.2fs", tide.time() - start))
end

tide.run(main)
