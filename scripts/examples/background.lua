-- background.lua: spawn returns at once and the tasks run in the background
-- while main does other work; main awaits them at the end.
-- Run: tide scripts/examples/background.lua
local tide = require "tide"

local function background_job(n)
  tide.sleep(0.5)
  print("Job " .. n .. " complete")
end

local function main()
  local start = tide.time()

  local t1 = tide.spawn(background_job, 1)
  local t2 = tide.spawn(background_job, 2)

  print("Doing other things...")
  tide.sleep(0.1)
  print("Still doing other things...")

  -- wait for the background jobs
  t1:await()
  t2:await()

  print(string.format("elapsed: %.2fs", tide.time() - start))
end

tide.run(main)
