-- Helpers shared by the specs (required as "spec.support"; not a spec).
local tide = require "tide"
local assert = require "luassert"

local S = {}

-- Runs fn on a fresh loop whose clock jumps over idle waits.
function S.virtual(fn, ...)
  return tide.run({ clock = "virtual" }, fn, ...)
end

-- Waits for task t (or runs fn as a task) with a time limit, so a regression
-- fails the test (kind "timeout") instead of deadlocking the whole run.
function S.await(t)
  return tide.wait_for(t, 2)
end

function S.gather(ts)
  return S.await(function() return tide.gather(ts) end)
end

-- Lets ready tasks run for a few loop turns.
function S.turns(n)
  for _ = 1, n or 3 do tide.sleep(0) end
end

-- Calls fn, expects it to raise a tide error; returns its kind and the error.
function S.errkind(fn, ...)
  local ok, e = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.is_true(tide.iserror(e), "expected a tide error, got " .. tostring(e))
  return e.kind, e
end

-- Expects fn to raise a plain error message containing text.
function S.raises_matching(text, fn, ...)
  local ok, e = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.is_string(e, "expected an error message, got " .. tostring(e))
  assert.is_truthy(e:find(text, 1, true), ("error %q does not contain %q"):format(e, text))
  return e
end

return S
