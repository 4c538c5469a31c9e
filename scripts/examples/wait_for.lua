-- wait_for.lua: give a 5 s operation only 2 s; wait_for cancels it and
-- raises an error of kind "timeout".
-- Run: tide scripts/examples/wait_for.lua
local tide = require "tide"

local function slow_operation()
  tide.sleep(5)
  return "done"
end

local function main()
  local start = tide.time()
  local ok, result = pcall(tide.wait_for, slow_operation, 2.0)
  if ok then
    print(result)
  elseif tide.iserror(result) and result.kind == "timeout" then
    print("The operation timed out!")
  else
    error(result, 0)
  end
  print(string.format("elapsed: %.2fs", tide.time() - start))
end

tide.run(main)
