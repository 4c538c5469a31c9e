-- tide.main: the body of the `tide` command's main task. Runs the steps
-- main.c prepared (LUA_INIT, -e chunks, -l libraries, -W, the script with
-- its arguments, then the REPL for -i or a bare `tide` on a terminal) in
-- order, as lua5.4 does, so every one of them may suspend.
local core = require "tide.core"
require "tide.coroutine" -- the main chunk is a task: coroutine.* must know

local function fail(message)
  io.stdout:flush()
  io.stderr:write(message, "\n")
  os.exit(1)
end

return function(steps)
  core.set_lua_main() -- this task is the main thread, as far as Lua code can tell
  for i, step in ipairs(steps) do
    if step.lib then
      _G[step.global] = require(step.lib) -- (it may suspend: see tide.coroutine)
    elseif step.warn then
      warn("@on")
    elseif step.repl then
      require("tide.repl").run(step)
    elseif step.fail then -- a chunk that did not compile, after steps that ran
      fail(step.fail)
    else
      local fn = step.fn
      if fn == nil then -- the script: read now, after the steps before it ran
        local err
        fn, err = loadfile(step.file or nil)
        if not fn then fail(step.progname .. ": " .. err) end
      end
      local args = step.args
      if i == #steps then -- called in this function's place: see task.c
        return core.tailcall, fn, table.unpack(args, 1, args.n)
      end
      -- called through select so that tracebacks say "in main chunk", as
      -- lua5.4's do, rather than naming this local
      select(2, nil, fn)(table.unpack(args, 1, args.n))
    end
  end
end
