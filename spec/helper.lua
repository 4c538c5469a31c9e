-- Every test must leave no task running: leftovers are cancelled and the
-- test fails, naming them.
local busted = require "busted"
local tide = require "tide"

local function leftovers()
  local left = {}
  for _, t in ipairs(tide.all_tasks()) do
    if t ~= tide.current_task() then
      left[#left + 1] = tostring(t)
      t:cancel("left running by a test")
    end
  end
  return left
end

busted.subscribe({ "test", "start" }, function(element)
  local run = element.run
  local function checked(...)
    local ok, err = pcall(run, ...)
    local left = leftovers()
    if #left > 0 then
      tide.sleep(0) -- let them unwind
    end
    if not ok then error(err, 0) end
    if #left > 0 then
      error("the test left tasks running (now cancelled): " .. table.concat(left, ", "), 0)
    end
  end
  element.run = function(...)
    if tide.current_task() then -- busted runs inside tide: already a task
      return checked(...)
    end
    return tide.run(checked, ...) -- busted under plain lua5.4 with tide.so
  end
  return nil, true
end)
