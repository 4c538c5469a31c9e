-- tide.busted: tide's part of a busted run. `require "tide"` loads it by
-- itself when busted runs in the same Lua state, so specs need no setup:
--
--   tide "$(command -v busted)" spec/     -- busted inside the tide command
--
-- * A test must leave no task running: tasks it leaves are cancelled (their
--   cleanup runs) and the test fails, naming them (a task left behind would
--   go on into the next tests: a server on its port, a waiter on a queue).
-- * Under plain lua5.4 (tide.so), where no loop runs around busted, give it
--   as busted's helper, which runs the whole of busted inside one tide.run:
--
--     lua5.4 "$(command -v busted)" --helper=tide.busted spec/
--
--   so test bodies, setup/teardown, before_each/after_each and finally may
--   suspend, and what a hook starts (a server) lives on for the tests, as
--   under tide. Loaded later (only by a spec's require "tide"), each test
--   body runs in a tide.run of its own.
local busted = require "busted"
local tide = require "tide.core" -- not "tide": that one loads this

-- once per busted run (the registry outlives busted's per-file module
-- reloading; the busted object refuses new fields)
local registry = debug.getregistry()
if type(busted) ~= "table" or type(busted.subscribe) ~= "function"
    or registry["tide.busted"] == busted then
  return true
end
registry["tide.busted"] = busted

-- The largest id of the tasks alive now (ids grow: a task alive later with
-- a larger one began after this).
local function last_id()
  local n = 0
  for _, t in ipairs(tide.all_tasks()) do
    local _, id = tide.task_info(t)
    if id > n then n = id end
  end
  return n
end

-- Cancels and names the tasks the test (the task me) started that still
-- run: begun after `before`, spawned by me or by running tasks of its own.
-- Not the test's: tasks begun by a callback (parent 0: a server's
-- connections, which its close ends), tasks begun before it (a hook's) and
-- what they spawn, and tasks whose parent has ended (whose it was is not
-- known: better to miss a leak than to fail a test that has none).
local function leftovers(me, before)
  local rows, left = {}, {}
  for _, t in ipairs(tide.all_tasks()) do
    local _, id, parent = tide.task_info(t)
    rows[id] = { t = t, parent = parent }
  end
  local _, my_id = tide.task_info(me)
  local function mine(id)
    if id == my_id then return true end
    local row = rows[id]
    return row ~= nil and id > before and row.parent ~= 0 and mine(row.parent)
  end
  for id, row in pairs(rows) do
    if id > before and row.t ~= me and row.parent ~= 0 and mine(row.parent) then
      left[#left + 1] = row.t
    end
  end
  table.sort(left, function(a, b) return select(2, tide.task_info(a)) < select(2, tide.task_info(b)) end)
  for i, t in ipairs(left) do
    left[i] = tostring(t) -- as it was (cancelling makes it ready)
    t:cancel("left running by a test")
  end
  return left
end

busted.subscribe({ "test", "start" }, function(element)
  local run = element.run
  local function checked(...)
    local me, before, returned = tide.current_task(), last_id(), false
    -- a test that fails keeps its error as raised (busted locates it where
    -- it was raised: not caught and raised again here); its tasks go too.
    -- (busted's message handler returns nothing: the error object the
    -- closing function gets is nil, so a flag tells how the test ended)
    local _ <close> = setmetatable({}, { __close = function()
      if not returned then leftovers(me, before) end
    end })
    run(...)
    returned = true
    local left = leftovers(me, before)
    if #left > 0 then
      tide.sleep(0) -- let them unwind
      error("the test left tasks running (now cancelled): " .. table.concat(left, ", "), 0)
    end
  end
  element.run = function(...)
    if tide.current_task() then return checked(...) end -- inside a loop already
    return tide.run(checked, ...)
  end
  return nil, true
end)

-- Loaded as busted's helper under lua5.4, before busted runs the files: the
-- run happens in one task.
if not tide.current_task() then
  local make = require "busted.execute"
  package.loaded["busted.execute"] = function(b)
    local execute = make(b)
    return function(...)
      return tide.run(execute, ...)
    end
  end
end

return true
