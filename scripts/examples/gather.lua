-- gather.lua: three 1 s tasks run concurrently; the whole thing takes ~1 s,
-- not ~3 s as it would if they were called one after the other.
-- Run: tide scripts/examples/gather.lua
local tide = require "tide"

local function task(name, delay)
  tide.sleep(delay)
  return name .. " done"
end

local function show(list)
  local parts = {}
  for i, v in ipairs(list) do
    parts[i] = string.format("%q", v)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function main()
  local start = tide.time()

  -- task("A", 1); task("B", 1); task("C", 1) in a row would need ~3 s.
  -- As three tasks their sleeps overlap:
  local results = tide.gather(
    tide.spawn(task, "A", 1),
    tide.spawn(task, "B", 1),
    tide.spawn(task, "C", 1)
  )

  print(show(results)) -- {"A done", "B done", "C done"}
  print(string.format("elapsed: %.2fs", tide.time() - start))
end

tide.run(main)
