-- gather_exceptions.lua: with return_exceptions, a failing task does not
-- abort the gather; its slot holds the error instead of a result.
-- Run: tide scripts/examples/gather_exceptions.lua
local tide = require "tide"

local function risky(name)
  if name == "B" then
    error("B failed!", 0)
  end
  return name .. " ok"
end

local function main()
  local results = tide.gather({
    tide.spawn(risky, "A"),
    tide.spawn(risky, "B"),
    tide.spawn(risky, "C"),
  }, { return_exceptions = true })

  for i = 1, 3 do
    local r = results[i]
    if tide.iserror(r) then
      -- a plain Lua error is wrapped: kind "error", original value in .value
      local msg = r.value ~= nil and tostring(r.value) or r.message
      print("Error: " .. msg)
    else
      print("OK: " .. tostring(r))
    end
  end
end

tide.run(main)
