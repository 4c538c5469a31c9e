-- tide.process_lua: the Lua half of process.run and process.shell
-- (host/process.c spawns and checks the arguments, then calls the function
-- this module returns). It feeds the input and captures stdout and stderr
-- in tasks of a task group while the caller waits for the exit, kills the
-- child on a timeout (SIGKILL; the "timeout" error carries what was
-- captured) and, through <close>, on any error or cancellation.
local tide = require "tide"

-- Writes input, then the end of input; a child that stopped reading (EPIPE,
-- kind "reset") is not an error, as in Python's communicate().
local function feed(stdin, input)
  local ok, err = pcall(function()
    if input and #input > 0 then stdin:write(input) end
    stdin:write_eof()
  end)
  stdin:close()
  if not ok and not (tide.iserror(err) and err.kind == "reset") then
    error(err, 0)
  end
end

local function collect(stream, into)
  while true do
    local data = stream:read()
    if not data then return end
    into[#into + 1] = data
  end
end

-- The exit (code, signal), once the output is read to its end.
local function communicate(p, input, out, err)
  return tide.task_group(function(g)
    if p.stdin then g:spawn(feed, p.stdin, input) end
    if out then g:spawn(collect, p.stdout, out) end
    if err then g:spawn(collect, p.stderr, err) end
    return p:wait()
  end)
end

-- finish(process, argv, input, timeout) -> {code, signal, stdout, stderr}
return function(proc, argv, input, timeout)
  local p <close> = proc
  local out, err = p.stdout and {}, p.stderr and {}
  local ok, code, signal
  if timeout then
    ok, code, signal = pcall(tide.timeout, timeout, communicate, p, input, out, err)
  else
    ok, code, signal = true, communicate(p, input, out, err)
  end
  local res = { stdout = out and table.concat(out), stderr = err and table.concat(err) }
  if ok then
    res.code, res.signal = code, signal
    return res
  end
  if not (tide.iserror(code) and code.kind == "timeout") then error(code, 0) end
  p:kill("SIGKILL")
  p:wait()
  local e = tide.error("timeout", ("'%s' killed after %g s"):format(table.concat(argv, " "), timeout))
  e.stdout, e.stderr, e.timeout = res.stdout, res.stderr, timeout
  error(e, 0)
end
