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

-- The tide binary under test: TIDE_BIN (ctest sets it), else the tide
-- running these specs (so build-*/tide busted tests itself), else
-- ./build/tide.
function S.tide_bin()
  local bin = os.getenv("TIDE_BIN")
  if bin then return bin end
  local pid = assert(io.open("/proc/self/stat")):read("a"):match("^%d+")
  local p = io.popen("readlink /proc/" .. pid .. "/exe")
  local exe = p:read("l")
  p:close()
  return exe and exe:match("/tide$") and exe or "./build/tide"
end

-- Writes content to a new temporary file; returns its name.
function S.tmpfile(content)
  local name = os.tmpname()
  local f = assert(io.open(name, "w"))
  f:write(content)
  f:close()
  return name
end

-- Quotes s for the shell.
function S.shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Runs a shell command line (blocking); returns stdout, stderr, exit code.
function S.sh(cmd)
  local errname = os.tmpname()
  local p = io.popen("{ " .. cmd .. "; } 2>" .. errname .. "; echo \"rc=$?\"")
  local out = p:read("a")
  p:close()
  local f = io.open(errname)
  local err = f:read("a")
  f:close()
  os.remove(errname)
  local rc = tonumber(out:match("rc=(%d+)\n$"))
  return out:gsub("rc=%d+\n$", ""), err, rc
end

return S
