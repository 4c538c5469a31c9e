-- tide.coroutine: lets a tide call made inside a user coroutine (a
-- generator made with coroutine.wrap, say) suspend the whole task.
-- coroutine.resume and coroutine.wrap become host/coroutine.c's, which pass
-- a park's yield up to the scheduler (and status and close, which know a
-- coroutine waiting so is not to be resumed); other yields behave exactly as in
-- plain Lua, but for a bare yield at a task's own level, which is
-- tide.sleep(0).
--
-- (require, which a module's top level may suspend through, is tide.core's:
-- host/require.c.)
local core = require "tide.core"

if core.co_resume then
  coroutine.resume, coroutine.wrap = core.co_resume, core.co_wrap
  coroutine.status, coroutine.close = core.co_status, core.co_close
  -- A bare yield in a task's own coroutine is sleep(0) (a cancellation is
  -- delivered there); in a user coroutine it is the plain yield.
  coroutine.yield = core.yield
  -- and the task that plays Lua's main thread (the command's main chunk)
  -- says so, as lua5.4's main thread does
  coroutine.running, coroutine.isyieldable = core.running, core.isyieldable
  -- only there: a traceback names a function by where it finds it first
  core.co_resume, core.co_wrap, core.co_status, core.co_close = nil, nil, nil, nil
  core.yield, core.running, core.isyieldable = nil, nil, nil
end
return true -- (not the table: tracebacks name coroutine.yield, not tide.coroutine.yield)
