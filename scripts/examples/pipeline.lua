-- pipeline.lua: a small concurrent file and process pipeline. Five tasks
-- write five files at once (tide.fs), five more checksum them with the
-- sha256sum program (tide.process, at most three running at a time), and
-- the report is written atomically and read back. Nothing blocks the loop:
-- a ticker task keeps ticking throughout.
-- Run: tide scripts/examples/pipeline.lua
local tide = require "tide"
local fs = require "tide.fs"
local process = require "tide.process"

local function main()
  local dir = os.tmpname()
  os.remove(dir)
  fs.mkdir(dir)
  -- removed however main ends (an error, Ctrl-C): <close> runs then too
  local _ <close> = setmetatable({}, { __close = function() fs.remove(dir, { recursive = true }) end })
  local ticks, running = 0, true
  local ticker = tide.spawn(function()
    while running do tide.sleep(0.01); ticks = ticks + 1 end
  end)

  -- stage 1: write the files concurrently
  local names = { "alpha", "beta", "gamma", "delta", "epsilon" }
  local writes = {}
  for i, name in ipairs(names) do
    writes[i] = tide.spawn(fs.write_file, dir .. "/" .. name .. ".txt", (name .. "\n"):rep(1000 * i))
  end
  tide.gather(writes)

  -- stage 2: checksum them with an external program, three at a time
  local sem = tide.Semaphore(3)
  local sums = {}
  for i, name in ipairs(names) do
    sums[i] = tide.spawn(function()
      local guard <close> = sem:acquire()
      local r = process.run({ "sha256sum", dir .. "/" .. name .. ".txt" })
      assert(r.code == 0, r.stderr)
      return name .. " " .. fs.stat(dir .. "/" .. name .. ".txt").size .. " " .. r.stdout:sub(1, 16)
    end)
  end
  local lines = tide.gather(sums)

  -- stage 3: the report, written atomically, then read back
  fs.write_file(dir .. "/report.txt", table.concat(lines, "\n") .. "\n", { atomic = true })
  io.write(fs.read_file(dir .. "/report.txt"))
  local n = 0
  for _ in fs.list_dir(dir) do n = n + 1 end
  print(n .. " files in the directory")

  running = false
  ticker:await()
  print("the loop kept ticking: " .. (ticks > 0 and "yes" or "no"))
end

tide.run(main)
