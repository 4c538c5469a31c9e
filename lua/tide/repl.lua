-- tide.repl: the `tide` command's interactive mode (`tide -i [script]`, or
-- `tide` with no script while stdin is a terminal), shaped like lua5.4's:
--
--   - prompts "> " and ">> " (or the globals _PROMPT, _PROMPT2); a chunk
--     left incomplete (its syntax error ends in "<eof>") reads more lines;
--   - "=expr" and a bare expression print their values ("return " .. line
--     is tried first); errors print "tide: message" and a traceback on
--     stderr, and the session goes on; end of file (Ctrl-D) exits 0;
--   - each chunk runs in the main task, so it may sleep, await, use http;
--     tasks it spawned keep running while the prompt waits, because the
--     line reader (tide.repl.core, in host/main.c) suspends the main task
--     instead of blocking the loop;
--   - Ctrl-C cancels the main task (tide's SIGINT handling): at the prompt
--     that drops the line being typed; while a chunk runs, the chunk gets
--     the "cancelled" error where it is suspended, the REPL prints it and
--     prompts again (Python's asyncio REPL does the same). Tasks the chunk
--     spawned are not cancelled. A chunk that never suspends is not
--     interrupted (the loop does not run until it ends; the Ctrl-C then
--     only clears the next prompt): a second Ctrl-C exits at once (130);
--   - the global `tide` is set (unless taken), as Python's asyncio REPL
--     imports asyncio; other modules need globals (x = require "..."):
--     each chunk's locals end with it, as in lua5.4;
--   - history: complete chunks, for the arrow keys; with TIDE_HISTORY=path
--     also loaded from and saved to that file (nothing is saved otherwise).
--
-- On a terminal lines are edited with libedit; otherwise (`tide -i <file`)
-- lines are read as lua.c without readline does: prompt printed, no echo.
local tide = require "tide"

local M = {}

local function prompt(first)
  local p = rawget(_G, first and "_PROMPT" or "_PROMPT2")
  if p == nil then
    return first and "> " or ">> "
  end
  return tostring(p)
end

local function iscancel(e)
  return tide.iserror(e) and e.kind == "cancelled"
end

-- A SIGTERM came (tide's watcher noted it): the REPL ends with it (exit
-- 143), as lua5.4 dies of it, even if the line caught its cancel; Ctrl-C
-- only stops the line
local function terminated()
  return debug.getregistry()["tide.interrupt_signal"] == 15
end

local function end_if_terminated()
  if terminated() then error(tide.error("cancelled", "terminated (SIGTERM)"), 0) end
end

local function incomplete(err)
  return type(err) == "string" and err:sub(-5) == "<eof>"
end

-- Reads one chunk: its function, or nil and a syntax error, or false at
-- end of file. Raises "cancelled" when Ctrl-C interrupts the reading.
local function read_chunk(core)
  local line = core.readline(prompt(true))
  if line == nil then
    return false
  end
  local src, typed = line, line -- typed: for the history
  if src:sub(1, 1) == "=" then -- lua 5.2's "=expr"
    src = "return " .. src:sub(2)
  end
  local fn = load("return " .. src .. ";", "=stdin")
  if fn then
    core.add_history(typed)
    return fn
  end
  while true do
    local err
    fn, err = load(src, "=stdin")
    if fn or not incomplete(err) then
      core.add_history(typed)
      return fn, err
    end
    local more = core.readline(prompt(false))
    if more == nil then -- end of file inside a chunk: report it
      core.add_history(typed)
      io.write("\n")
      return nil, err
    end
    src, typed = src .. "\n" .. more, typed .. "\n" .. more
  end
end

-- Message handler: the message and a traceback without the REPL's frames;
-- an error re-raised from an awaited task also shows where it came from.
local function handler(e)
  if iscancel(e) then -- Ctrl-C: no traceback
    return e
  end
  local msg = e
  if type(msg) ~= "string" then
    local mt = getmetatable(msg)
    if mt and mt.__tostring and not tide.iserror(msg) then
      return tostring(msg) -- the text alone, as lua5.4's message handler gives
    elseif mt and mt.__tostring then
      msg = tostring(msg)
    else
      msg = string.format("(error object is a %s value)", type(msg))
    end
  end
  local tb = debug.traceback(msg, 2)
  local cut = tb:find("\n\t%[C%]: in function 'xpcall'")
  if cut then
    tb = tb:sub(1, cut - 1)
  end
  if tide.iserror(e) and type(e.traceback) == "string" then -- as the command says it
    tb = tb .. (e.kind == "thread" and "\nre-raised from the to_thread worker:\n"
      or "\nre-raised from the awaited task:\n") .. e.traceback
  end
  return tb
end

-- without the program's name, as lua5.4's REPL reports
local function report(msg)
  io.stdout:flush()
  io.stderr:write(tostring(msg), "\n")
  io.stderr:flush()
end

-- step: {repl = true, progname = "tide"} (from main.c)
function M.run(step)
  local core = require "tide.repl.core"
  if step.banner then -- a bare `tide` on a terminal: after LUA_INIT ran, as lua5.4
    io.write(step.banner)
    io.stdout:flush()
  end
  local edit = core.init()
  if rawget(_G, "tide") == nil then -- as Python's asyncio REPL has asyncio
    _G.tide = tide
  end
  while true do
    local ok, fn, err = pcall(read_chunk, core)
    end_if_terminated()
    if not ok then
      if not iscancel(fn) then
        error(fn, 0)
      end
      io.write("\n") -- Ctrl-C at the prompt: drop the line
    elseif fn == false then
      break
    elseif not fn then
      report(err)
    else
      local res = table.pack(xpcall(fn, handler))
      end_if_terminated()
      if not res[1] then
        if edit and iscancel(res[2]) then
          io.write("\n") -- after the terminal's "^C"
        end
        report(res[2])
      elseif res.n > 1 then
        local pok, perr = pcall(print, table.unpack(res, 2, res.n))
        if not pok then
          report("error calling 'print' (" .. tostring(perr) .. ")")
        end
      end
    end
  end
  io.write("\n")
  io.stdout:flush()
end

return M
