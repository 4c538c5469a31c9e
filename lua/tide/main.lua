-- tide.main: the body of the `tide` command's main task. Runs the steps
-- main.c prepared (LUA_INIT, -e chunks, -l libraries, the script with its
-- arguments, then the REPL for -i or a bare `tide` on a terminal) in
-- order, so every one of them may suspend.
return function(steps)
  for _, step in ipairs(steps) do
    if step.lib then
      -- through pcall, so that a missing module's message carries no
      -- position inside tide (lua5.4 prints none)
      local ok, mod = pcall(require, step.lib)
      if not ok then error(mod, 0) end
      _G[step.global] = mod
    elseif step.repl then
      require("tide.repl").run(step)
    elseif step.fail then -- a chunk that did not compile, after steps that ran
      io.stdout:flush()
      io.stderr:write(step.fail, "\n")
      os.exit(1)
    else
      -- called through select so that tracebacks say "in main chunk", as
      -- lua5.4's do, rather than naming this table field
      select(2, nil, step.fn)(table.unpack(step.args, 1, step.args.n))
    end
  end
end
