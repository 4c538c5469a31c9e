-- tide.coroutine: lets a tide call made inside a user coroutine (a
-- generator made with coroutine.wrap, say) suspend the whole task. A tide
-- park yields a private sentinel; coroutine.resume and coroutine.wrap pass
-- such yields up to the scheduler and resume the inner coroutine with what
-- the scheduler sends back. Other yields behave exactly as in plain Lua,
-- but for a bare yield at a task's own level, which is tide.sleep(0).
--
-- (require, which a module's top level may suspend through, is tide.core's:
-- host/require.c.)
local core = require "tide.core"

local SENTINEL = core.sentinel
local co_resume, co_yield, co_create = coroutine.resume, coroutine.yield, coroutine.create
local co_close, co_status = coroutine.close, coroutine.status

if coroutine.tide_patched then
  return true
end

-- With an instruction limit, every resume is counted against the task step's
-- budget (limit_arm, before it), and one that returns past the budget fails
-- in the resumer too (limit_check; the runtime's limit, host/task.c).
local limit_check = core.limited() and core.limit_check
local limit_arm = core.limited() and core.limit_arm
if limit_arm then
  local plain = co_resume
  co_resume = function(co, ...)
    limit_arm(co)
    return plain(co, ...)
  end
end

-- Returns resume's results as they came (no padding: a coroutine that
-- returned nothing gives `true` alone, as in plain Lua).
local function forward(co, ...)
  if limit_check then limit_check() end
  local ok, first = ...
  if ok and first == SENTINEL and co_status(co) == "suspended" then
    return forward(co, co_resume(co, co_yield(SENTINEL, select(3, ...))))
  end
  return ...
end

function coroutine.resume(co, ...)
  return forward(co, co_resume(co, ...))
end

local function unwrap(co, ok, ...)
  if ok then
    return ...
  end
  local err = ...
  if co_status(co) == "dead" then
    co_close(co)
  end
  error(err, type(err) == "string" and 2 or 0)
end

function coroutine.wrap(f)
  local co = co_create(f)
  return function(...)
    return unwrap(co, forward(co, co_resume(co, ...)))
  end
end

-- A bare yield in a task's own coroutine is sleep(0) (a cancellation is
-- delivered there); in a user coroutine it is the plain yield.
coroutine.yield = core.yield
-- and the task that plays Lua's main thread (the command's main chunk)
-- says so, as lua5.4's main thread does
coroutine.running, coroutine.isyieldable = core.running, core.isyieldable
-- only there: a traceback names a function by where it finds it first
core.yield, core.running, core.isyieldable = nil, nil, nil

coroutine.tide_patched = true
return true -- (not the table: tracebacks name coroutine.yield, not tide.coroutine.yield)
