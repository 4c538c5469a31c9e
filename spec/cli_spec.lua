-- Specs for the `tide` command: a Lua 5.4 interpreter whose main chunk
-- runs as a task. Each spec runs the real binary in a child process.
local tide = require "tide"

local TIDE = require("spec.support").tide_bin()

local tmpfile = require("spec.support").tmpfile

local sh = require("spec.support").sh

local function run(script, args, env)
  local name = tmpfile(script)
  local out, err, rc = sh((env or "") .. " " .. TIDE .. " " .. name .. " " .. (args or ""))
  os.remove(name)
  return out, err, rc
end

-- A new directory holding the module name.lua with source src.
local function module_dir(name, src)
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir " .. dir)
  local f = assert(io.open(dir .. "/" .. name .. ".lua", "w"))
  f:write(src)
  f:close()
  return dir
end

describe("tide command", function()
  it("refuses tide.run in a callback that runs after the main chunk ended (it crashed)", function()
    local out, err, rc = run([[
local tide = require "tide"
tide.call_soon(function()
  tide.call_soon(function() print(pcall(tide.run, function() return "inner" end)) end)
  tide.call_soon(print, "second")
end)
]])
    assert.equals(0, rc, err)
    assert.matches("^false\tinvalid_state: [^\n]*tide.run cannot be called from a loop callback[^\n]*\nsecond\n$", out)
  end)

  it("builds arg exactly as lua5.4 does and passes the arguments as ...", function()
    local out, err, rc = run([[
      print(arg[0]:match("[^/]+$") ~= nil, arg[1], arg[2], #arg, select("#", ...), ...)
      print(arg[-1] ~= nil)
    ]], "a 'b c'")
    assert.equals(0, rc, err)
    assert.equals("true\ta\tb c\t2\t2\ta\tb c\ntrue\n", out)
  end)

  -- The same script under lua5.4 and under tide: the same stdout, exit
  -- status and error message (program name aside); tide's traceback, if
  -- any, has the same frames, then says which task (lua5.4: "[C]: in ?").
  local function same_as_lua54(script, args)
    local name = tmpfile(script)
    local q = require("spec.support").shell_quote
    local function go(bin)
      local out, err, rc = sh("cd /tmp && " .. bin .. " " .. q(name) .. " " .. (args or ""))
      err = err:gsub("^" .. bin:gsub("%p", "%%%0") .. ": ", "PROG: ")
      err = err:gsub("\n\t%[C%]: in %?\n$", "\n"):gsub("\n\tin task 'main'\n$", "\n")
      return out, err, rc
    end
    local lo, le, lrc = go("lua5.4")
    local to, te, trc = go(TIDE)
    os.remove(name)
    assert.equals(lo, to)
    assert.equals(le, te)
    assert.equals(lrc, trc)
  end

  it("the main chunk is Lua's main thread as far as the coroutine library can tell", function()
    same_as_lua54([[
      local co, ismain = coroutine.running()
      print(type(co), ismain, coroutine.isyieldable(), coroutine.isyieldable(co))
      print(pcall(coroutine.yield, 1))
      local gen = coroutine.wrap(function() print(coroutine.isyieldable(), select(2, coroutine.running())); coroutine.yield(1) end)
      gen()
      coroutine.yield()
    ]])
  end)

  it("the main chunk has one C frame below it, as in lua5.4 (error levels, debug.getinfo)", function()
    same_as_lua54([[
      print(debug.getinfo(2, "S").what, debug.getinfo(3))
      if pcall(debug.getlocal, 4, 1) then print("loaded as module") else print("run as main script") end
      print(pcall(error, "x", 3))
      error("level 2", 2)
    ]])
  end)

  it("os.exit(code, true) closes the main chunk's pending <close> variables, as lua5.4", function()
    same_as_lua54([[
      local x <close> = setmetatable({}, { __close = function() print("closed x") end })
      do
        local y <close> = setmetatable({}, { __close = function(_, e) print("closed y", e) end })
        os.exit(3, true)
      end
    ]])
  end)

  it("os.exit(code, true) in a coroutine closes the main chunk's <close> variables too, as lua5.4", function()
    same_as_lua54([[
      local x <close> = setmetatable({}, { __close = function() print("closed x") end })
      coroutine.wrap(function()
        local y <close> = setmetatable({}, { __close = function() print("not closed: not main") end })
        os.exit(4, true)
      end)()
    ]])
  end)

  it("os.exit(code, true) in another task closes the main chunk's <close> variables", function()
    local out, err, rc = run([[
      local tide = require "tide"
      local x <close> = setmetatable({}, { __close = function() print("closed x") end })
      tide.spawn(function() os.exit(6, true) end)
      tide.sleep(10)
    ]])
    assert.equals(6, rc, err)
    assert.equals("closed x\n", out)
  end)

  it("runs the collector in generational mode, as lua5.4 does", function()
    same_as_lua54([[print(collectgarbage("incremental"), collectgarbage("generational"))]])
  end)

  it("an error object with __tostring is reported by that text alone", function()
    same_as_lua54([[error(setmetatable({}, { __tostring = function() return "custom!" end }))]])
  end)

  it("io.write into a pipe nobody reads ends the process by SIGPIPE, as lua5.4", function()
    local q = require("spec.support").shell_quote
    local out, err, rc = sh("bash -c " .. q("timeout -s KILL 10 " .. TIDE
      .. " -e 'while true do io.write(\"y\\n\") end' | head -n 1; echo \"rc=${PIPESTATUS[0]}\""))
    assert.equals(0, rc, err)
    assert.equals("y\nrc=141\n", out)
  end)

  it("the children of os.execute and io.popen die of SIGPIPE, as under lua5.4 (not ignored)", function()
    -- tide started as a shell starts it (SIGPIPE at its default), whatever this runner has
    local out, err, rc = run([[
      print(os.execute("bash -c 'set -o pipefail; yes | head -n 1 >/dev/null'"))
      local f = io.popen("grep SigIgn /proc/self/status")
      local ignored = tonumber(f:read("a"):match("SigIgn:%s*(%x+)"), 16)
      f:close()
      print(ignored & (1 << (13 - 1)) == 0) -- SIGPIPE is 13
    ]], nil, "env --default-signal=PIPE")
    assert.equals(0, rc, err)
    assert.equals("nil\texit\t141\ntrue\n", out)
  end)

  it("reads the script when its turn comes (a -e before it may write it) and -W applies in order", function()
    local dir = os.tmpname()
    os.remove(dir)
    local out, err, rc = sh(("mkdir %s && cd %s && %s -e \"warn('before') io.open('gen.lua', 'w'):write('print(1) warn(\\'after\\')'):close()\" -W gen.lua; rm -r %s")
      :format(dir, dir, TIDE, dir))
    assert.equals(0, rc, err)
    assert.equals("1\n", out)
    assert.equals("Lua warning: after\n", err)
  end)

  it("runs the main chunk as a task: top-level code may sleep and gather", function()
    local out, err, rc = run([[
      local tide = require "tide"
      local function task(name, delay) tide.sleep(delay); return name .. " done" end
      local t0 = tide.time()
      local r = tide.gather(tide.spawn(task, "A", 0.2), tide.spawn(task, "B", 0.2))
      print(r[1], r[2], tide.time() - t0 < 0.35, tide.current_task().name)
    ]])
    assert.equals(0, rc, err)
    assert.equals("A done\tB done\ttrue\tmain\n", out)
  end)

  it("-e runs code, -l loads a library, -v shows the version", function()
    local out, err, rc = sh(TIDE .. [[ -l tide -e "tide.sleep(0.01) print(type(tide.gather))"]])
    assert.equals(0, rc, err)
    assert.equals("function\n", out)
    out = sh(TIDE .. " -v")
    assert.matches("^Lua 5%.4%.%d+  Copyright [^\n]+\ntide %d+%.%d+%.%d+\n$", out) -- lua5.4's line first
  end)

  it("-l of a missing module says so without a position inside tide, as lua5.4; -l may suspend", function()
    local _, err, rc = sh(TIDE .. " -l spec_no_such_module -e 'print(1)'")
    assert.equals(1, rc)
    assert.matches("^[^\n]*tide: module 'spec_no_such_module' not found:\n\tno field", err)
    local dir = module_dir("slowmod", "require('tide').sleep(0.01) return { ready = true }")
    local out
    out, err, rc = sh("cd " .. dir .. " && " .. TIDE .. " -l slowmod -e 'print(slowmod.ready)'")
    os.execute("rm -rf " .. dir)
    assert.equals(0, rc, err)
    assert.equals("true\n", out)
  end)

  it("-l a-b sets the global a-b, as Debian's lua5.4 (5.4.4) does", function()
    local dir = module_dir("lm-x", "return {x = 1}")
    local out, err = sh("cd " .. dir .. " && " .. TIDE .. [[ -l lm-x -e "print(_G['lm-x'].x, lm)"]])
    os.execute("rm -rf " .. dir)
    assert.equals("1\tnil\n", out, err)
  end)

  it("io.write, file:write and os.exit name themselves and the caller's line in errors, as in lua5.4", function()
    local _, err, rc = run("local x\nio.stdout:write('a', x)\n")
    assert.equals(1, rc)
    assert.matches(":2: bad argument #2 to 'write' %(string expected, got nil%)", err)
    assert.matches("%[C%]: in method 'write'", err)
    local out = sh(TIDE .. [[ -e "print(pcall(io.write, nil)) print(pcall(os.exit, {}))"]])
    assert.equals("false\tbad argument #1 to 'io.write' (string expected, got nil)\n"
      .. "false\tbad argument #1 to 'os.exit' (number expected, got table)\n", out)
  end)

  it("a SIGINT or SIGTERM that comes while the main chunk never suspends is not lost", function()
    local process = require "tide.process"
    local name = tmpfile("print('start') io.stdout:flush()\n"
      .. "local t = os.clock() while os.clock() - t < 0.6 do end print('end')\n")
    for sig, code in pairs({ SIGINT = 130, SIGTERM = 143 }) do
      local p <close> = process.spawn({ TIDE, name }, { stderr = "null" })
      assert.equals("start", p.stdout:read_line())
      p:kill(sig)
      assert.equals(code, p:wait(), sig)
    end
    os.remove(name)
  end)

  it("warnings are off until -W or warn('@on'), as in lua5.4", function()
    local code = [[ -e "warn('a', 'b') warn('@off') warn('hidden') warn('@on') warn('c')"]]
    local _, err, rc = sh(TIDE .. " -W" .. code)
    assert.equals(0, rc, err)
    assert.equals("Lua warning: ab\nLua warning: c\n", err)
    _, err = sh(TIDE .. code)
    assert.equals("Lua warning: c\n", err)
  end)

  it("- reads the script from stdin", function()
    local out, err, rc = sh("echo 'print(1 + 1, ...)' | " .. TIDE .. " - x")
    assert.equals(0, rc, err)
    assert.equals("2\tx\n", out)
  end)

  it("with no script and stdin not a terminal, runs stdin as the program (no REPL)", function()
    local out, err, rc = sh("printf 'print(1 + 1)\\n=3\\n' | " .. TIDE)
    assert.equals(1, rc) -- "=3" is no statement: a syntax error, not a REPL line
    assert.equals("", out)
    assert.matches("stdin:2:", err)
    out, err, rc = sh("echo 'print(1 + 1)' | " .. TIDE)
    assert.equals(0, rc, err)
    assert.equals("2\n", out)
  end)

  it("-i is an option (usage lists it); an error in the script ends before the REPL", function()
    local _, err, rc = sh(TIDE .. " -x")
    assert.equals(1, rc)
    assert.matches("%-i%s+enter interactive mode", err)
    local name = tmpfile("error('early')")
    local out
    out, err, rc = sh("echo '=1' | " .. TIDE .. " -i " .. name)
    os.remove(name)
    assert.equals(1, rc)
    assert.matches("early", err)
    assert.matches("^Lua 5%.4[^\n]*\ntide %d[^\n]*\n$", out) -- the banner (-i implies -v), no prompt
  end)

  it("finds Debian's packaged Lua modules", function()
    local out, err, rc = sh(TIDE .. [[ -e "print(type(require('lfs').currentdir))"]])
    assert.equals(0, rc, err)
    assert.equals("function\n", out)
  end)

  it("an uncaught error prints the message and a traceback naming the task, exit 1", function()
    local out, err, rc = run([[
      local tide = require "tide"
      local function inner() error("kaput") end
      local t = tide.spawn({ name = "worker" }, inner)
      t:await()
    ]])
    assert.equals(1, rc)
    assert.equals("", out)
    assert.matches("kaput", err)
    assert.matches("stack traceback:", err)
    assert.matches("in main chunk", err)
    assert.matches("in task 'main'", err)
    -- and where the error came from: the awaited task, and where it was spawned
    assert.matches("re%-raised from the awaited task:", err)
    assert.matches("in task 'worker' %(spawned at [^)]+:3 by task 'main'%)", err)
  end)

  it("an error in a -e chunk run before a script shows no frame of tide's own, as lua5.4's", function()
    local name = tmpfile("print('not reached')")
    local _, err, rc = sh(TIDE .. [[ -e 'error("x")' ]] .. name)
    os.remove(name)
    assert.equals(1, rc)
    assert.matches("(command line):1: in main chunk\n\tin task 'main'", err, 1, true)
    assert.is_nil(err:find("lua/tide/", 1, true), err) -- it showed tide.main's frame
  end)

  it("reports a syntax error like lua5.4, exit 1", function()
    local _, err, rc = run("x = = 1")
    assert.equals(1, rc)
    assert.matches("unexpected symbol near '='", err)
  end)

  it("runs each step before it compiles the next, as lua5.4: -e output, then the syntax error", function()
    local name = tmpfile("x = = 1\n")
    local out, err, rc = sh(TIDE .. " -e 'print(1)' " .. name)
    os.remove(name)
    assert.equals(1, rc)
    assert.equals("1\n", out)
    assert.matches("unexpected symbol near '='", err)
  end)

  it("-l of a missing module reports it as lua5.4 does, with no position inside tide", function()
    local _, err, rc = sh(TIDE .. " -l no_such_module_x")
    assert.equals(1, rc)
    assert.matches("^[^\n]*: module 'no_such_module_x' not found:", err)
    assert.is_nil(err:match("^[^\n]*lua/tide/"), err)
  end)

  it("an error raised through gather shows the failed child's traceback too", function()
    local _, err, rc = run([[
      local tide = require "tide"
      local function bad() tide.sleep(0.01); error("child broke") end
      tide.gather(function() return 1 end, bad)
    ]])
    assert.equals(1, rc)
    assert.matches("re%-raised from the awaited task:.-child broke.-in task 'Task%-%d+' %(spawned at [^)]+:3 by task 'main'%)", err)
  end)

  it("an error value that is not a string says what it is, as lua5.4", function()
    local _, err, rc = sh(TIDE .. " -e 'error({})'")
    assert.equals(1, rc)
    assert.matches("^[^\n]*: %(error object is a table value%)\n", err)
    _, err = sh(TIDE .. " -e 'error(true)'")
    assert.matches("^[^\n]*: %(error object is a boolean value%)\n", err)
    _, err = sh(TIDE .. [[ -e 'error(setmetatable({}, {__tostring = function() return "mine" end}))']])
    assert.matches("^[^\n]*: mine\n", err)
  end)

  it("-E ignores LUA_PATH and LUA_CPATH", function()
    local out, err, rc = sh("LUA_PATH='/nowhere/?.lua' LUA_CPATH='/nowhere/?.so' " .. TIDE
      .. " -E -e 'print(package.path:find(\"nowhere\", 1, true), package.cpath:find(\"nowhere\", 1, true))'")
    assert.equals(0, rc, err)
    assert.equals("nil\tnil\n", out)
  end)

  it("print into a pipe whose reader has gone ends the process by SIGPIPE, as lua5.4", function()
    local q = require("spec.support").shell_quote
    local out, err, rc = sh("bash -c " .. q("timeout -s KILL 10 " .. TIDE
      .. " -e 'local i = 0 while true do i = i + 1 print(i) end' | head -n 2; echo \"rc=${PIPESTATUS[0]}\""))
    assert.equals(0, rc, err)
    assert.equals("1\n2\nrc=141\n", out)
  end)

  it("a failed task nobody awaited is reported once, with its traceback", function()
    local _, err, rc = run([[
      local tide = require "tide"
      tide.spawn({ name = "lonely" }, function() error("nobody saw me") end)
      tide.sleep(0.01)
    ]])
    assert.equals(0, rc)
    local _, count = err:gsub("nobody saw me", "")
    assert.equals(1, count, err)
    assert.matches("in task 'lonely' %(spawned at", err)
  end)

  it("a child failing after its gather already failed is not reported (asyncio marks it retrieved)", function()
    local _, err, rc = run([[
      local tide = require "tide"
      local a = tide.spawn(function() tide.sleep(0.01); error("first") end)
      local b = tide.spawn(function() tide.sleep(0.02); error("second") end)
      print(pcall(tide.gather, a, b))
      tide.sleep(0.05)
      a, b = nil, nil
      collectgarbage()
    ]])
    assert.equals(0, rc)
    assert.not_matches("second", err)
  end)

  it("tasks still running when the main chunk ends are cancelled and may clean up", function()
    local out, err, rc = run([[
      local tide = require "tide"
      tide.spawn(function()
        local ok, e = pcall(tide.sleep, 100)
        print("cleanup", e.kind)
        error(e, 0)
      end)
      tide.sleep(0.01)
      print("main done")
    ]])
    assert.equals(0, rc, err)
    assert.equals("main done\ncleanup\tcancelled\n", out)
  end)

  it("os.exit exits with its code", function()
    local _, _, rc = run("require('tide').sleep(0.001) os.exit(3)")
    assert.equals(3, rc)
  end)

  it("os.exit ends the process at once, flushing output, while a to_thread job never ends", function()
    -- exit() ran libuv's destructor, which joined the thread pool: it hung
    for _, close in ipairs { "", ", true" } do
      local out, err, rc = run(([[
        local tide = require "tide"
        local c <close> = setmetatable({}, { __close = function() io.write(" closed") end })
        tide.spawn(tide.to_thread, function() while true do end end)
        tide.sleep(0.05)
        io.write("bye")
        os.exit(7%s)
      ]]):format(close), nil, "timeout 10")
      assert.equals(7, rc, err)
      assert.equals(close == "" and "bye" or "bye closed", out)
    end
  end)

  it("runs with stdin, stdout or stderr closed (they read and write /dev/null)", function()
    local name = tmpfile([[
      local tide = require "tide"
      local c <close> = tide.signal("SIGUSR2") -- handles of its own
      tide.gather(function() tide.sleep(0.01) end)
      print("to stdout", io.read("l"))
      io.stderr:write("to stderr\n")
      os.exit(5)
    ]])
    for _, redir in ipairs { "0<&-", "1>&-", "2>&-", "0<&- 1>&- 2>&-" } do
      local out, err, rc = sh(TIDE .. " " .. name .. " " .. redir)
      assert.equals(5, rc, redir .. ": " .. err)
      assert.equals(redir:find("1>&-") and "" or "to stdout\tnil\n", out, redir)
      assert.equals(redir:find("2>&-") and "" or "to stderr\n", err, redir)
    end
    os.remove(name)
  end)

  it("Ctrl-C cancels the main task so it can clean up, then exits 130", function()
    local name = tmpfile([[
      local tide = require "tide"
      io.stdout:setvbuf("no")
      print("ready")
      local ok, e = pcall(tide.sleep, 30)
      print("cleanup", e.kind)
      error(e, 0)
    ]])
    local out, err, rc = sh(TIDE .. " " .. name .. " & pid=$!; sleep 0.3; kill -INT $pid; wait $pid")
    os.remove(name)
    assert.equals(130, rc, err)
    assert.equals("ready\ncleanup\tcancelled\n", out)
    assert.matches("interrupted", err)
  end)

  it("kill -USR1 prints the task tree with states and lines", function()
    local name = tmpfile([[
      local tide = require "tide"
      tide.spawn({ name = "sleeper" }, tide.sleep, 0.6)
      tide.sleep(0.6)
    ]])
    local _, err, rc = sh(TIDE .. " " .. name .. " & pid=$!; sleep 0.3; kill -USR1 $pid; wait $pid")
    os.remove(name)
    assert.equals(0, rc, err)
    assert.matches("sleeper%s+waiting", err)
    assert.matches("main%s+waiting.-:3", err)
  end)

  it("TIDE_DEBUG=1 warns about a step holding the loop and lists tasks pending at exit", function()
    local out, err, rc = run([[
      local tide = require "tide"
      local t0 = os.clock()
      while os.clock() - t0 < 0.15 do end
      tide.spawn({ name = "straggler" }, function() pcall(tide.sleep, 10); tide.Event():wait() end)
      tide.sleep(0.01)
    ]], "", "TIDE_DEBUG=1")
    assert.equals(0, rc, err)
    assert.matches("task 'main' held the loop for %d+ ms", err)
    assert.matches("still pending", err)
    assert.matches("straggler", err)
  end)

  it("TIDE_DEBUG=1 lists every task pending when main ends, at the user's lines", function()
    local _, err, rc = run([[
      local tide = require "tide"
      tide.spawn({ name = "sleeper" }, function() tide.sleep(10) end)
      local lock = tide.Lock(); lock:acquire()
      tide.spawn({ name = "locked" }, function() lock:acquire() end)
      tide.spawn({ name = "hog" }, function() local t0 = os.clock() while os.clock() - t0 < 0.15 do end end)
      tide.sleep(0.3)
    ]], "", "TIDE_DEBUG=1")
    assert.equals(0, rc, err)
    assert.matches("task 'hog' held the loop for %d+ ms %(it ended; spawned at [^)]*:5%)", err)
    assert.matches("still pending when the run's main task ended", err)
    assert.matches("sleeper%s+waiting%s+at [^\n]*:2\n", err)
    assert.matches("locked%s+waiting%s+at [^\n]*:4\n", err) -- not inside tide's sync.lua
  end)

  it("runs busted inside the host, where specs can suspend", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local f = assert(io.open(dir .. "/x_spec.lua", "w"))
    f:write([[
      local tide = require "tide"
      describe("inside", function()
        it("sleeps", function() tide.sleep(0.01) end)
        it("fails", function() assert.equals(1, 2) end)
      end)
    ]])
    f:close()
    local out, _, rc = sh("cd " .. dir .. " && " .. (TIDE:sub(1, 1) == "/" and TIDE or os.getenv("PWD") .. "/" .. TIDE)
      .. " /usr/bin/busted -o TAP x_spec.lua")
    os.execute("rm -rf " .. dir)
    assert.equals(1, rc)
    assert.matches("ok 1 %- inside sleeps", out)
    assert.matches("not ok 2 %- inside fails", out)
  end)
end)

describe("tide.dump_tasks", function()
  it("prints every live task", function()
    local t = tide.spawn({ name = "visible" }, tide.sleep, 0.05)
    tide.sleep(0)
    -- the dump goes to stderr; check it runs and the task is live
    tide.dump_tasks()
    assert.is_false(t:done())
    t:await()
  end)
end)

-- Starts script in a child tide process, then runs steps in order: "wait X"
-- polls the child's stdout (unbuffered there) until it holds X, anything
-- else is a shell command where $pid is the child. A child still running
-- after 20 s is killed (status 137). Returns its stdout, stderr, exit status
-- and how long the whole took, in seconds.
local function child(script, steps)
  local name, out, err = tmpfile(script), os.tmpname(), os.tmpname()
  local cmd = { TIDE .. " " .. name .. " >" .. out .. " 2>" .. err .. " & pid=$!",
    "(sleep 20; kill -KILL $pid) >/dev/null 2>&1 & dog=$!" }
  for _, step in ipairs(steps) do
    local text = step:match("^wait (.*)")
    cmd[#cmd + 1] = text and ("for i in $(seq 200); do grep -q '%s' %s && break; sleep 0.05; done")
      :format(text, out) or step
  end
  cmd[#cmd + 1] = "wait $pid; rc=$?; kill $dog; (exit $rc)"
  local t0 = tide.time()
  local _, _, rc = sh(table.concat(cmd, "; "))
  local elapsed = tide.time() - t0
  local function slurp(f)
    local h = assert(io.open(f))
    local s = h:read("a")
    h:close()
    os.remove(f)
    return s
  end
  os.remove(name)
  return slurp(out), slurp(err), rc, elapsed
end

describe("tide command and signals", function()
  it("under lua5.4 (tide.so), Ctrl-C during tide.run cancels its main task too, then lua5.4 stops", function()
    local process = require "tide.process"
    local name = tmpfile([[
      local tide = require "tide"
      io.stdout:setvbuf("no")
      tide.run(function()
        local function tick() tide.call_later(0.005, tick) end -- Lua on lua5.4's main thread
        tick()
        print("ready")
        local ok, e = pcall(tide.sleep, 30)
        print("cleanup", tostring(e))
        error(e, 0)
      end)
      print("not reached")
    ]])
    local p <close> = process.spawn({ TIDE:gsub("tide$", "lua54-tide"), name }, { stderr = "pipe" })
    assert.equals("ready", p.stdout:read_line())
    local t0 = tide.time()
    p:kill("SIGINT")
    assert.equals(1, p:wait()) -- lua5.4's status for an error
    assert.is_true(tide.time() - t0 < 2, "the run went on after the Ctrl-C")
    assert.equals("cleanup\tcancelled: interrupted (SIGINT)\n", p.stdout:read_all())
    assert.matches("interrupted", p.stderr:read_all())
    os.remove(name)
  end)

  it("under lua5.4, a debug hook set during tide.run is not taken for lua.c's Ctrl-C hook", function()
    local r = require("tide.process").run({ TIDE:gsub("tide$", "lua54-tide"), "-e", [[
      local tide = require "tide"
      local n = 0
      print(pcall(tide.run, function()
        tide.call_later(0.01, function() debug.sethook(function() n = n + 1 end, "crl", 1) end)
        tide.sleep(0.2)
        return "main finished"
      end))
      debug.sethook()]] })
    assert.equals("true\tmain finished\n", r.stdout, r.stderr)
  end)

  it("Ctrl-C stops the crawl example at once, also while it fetches one URL after another", function()
    local process = require "tide.process"
    local p <close> = process.spawn({ TIDE, "scripts/examples/crawl.lua" }, { stderr = "null" })
    tide.sleep(1) -- in the sequential phase (about 10 s): each fetch is in a pcall
    local t0 = tide.time()
    p:kill("SIGINT")
    assert.equals(130, p:wait())
    assert.is_true(tide.time() - t0 < 2, "it went on after the Ctrl-C")
    assert.equals("", p.stdout:read_all())
  end)

  it("SIGTERM cancels the main task so pcall and <close> clean-up run, then exits 143", function()
    local out, err, rc = child([[
      local tide = require "tide"
      io.stdout:setvbuf("no")
      local res <close> = setmetatable({}, { __close = function() print("closed") end })
      print("ready")
      local ok, e = pcall(tide.sleep, 30)
      print("cleanup", e.kind, e.message)
      error(e, 0)
    ]], { "wait ready", "kill -TERM $pid" })
    assert.equals(143, rc, err)
    assert.equals("ready\ncleanup\tcancelled\tterminated (SIGTERM)\nclosed\n", out)
    assert.matches("terminated", err)
  end)

  it("a second Ctrl-C exits at once even while a task keeps the loop busy", function()
    local out, err, rc, elapsed = child([[
      io.stdout:setvbuf("no")
      print("ready")
      local x = 0
      while true do x = x + 1 end
    ]], { "wait ready", "kill -INT $pid", "sleep 0.2", "kill -INT $pid" })
    assert.equals(130, rc, err)
    assert.equals("ready\n", out)
    assert.matches("interrupted twice, exiting now", err)
    assert.is_true(elapsed < 5, "took " .. elapsed .. " s")
  end)

  it("a second SIGTERM exits at once, 143", function()
    local out, err, rc, elapsed = child([[
      local tide = require "tide"
      io.stdout:setvbuf("no")
      print("ready")
      pcall(tide.sleep, 30)
      print("cleaning")
      tide.sleep(10)
      print("never")
    ]], { "wait ready", "kill -TERM $pid", "wait cleaning", "kill -TERM $pid" })
    assert.equals(143, rc, err)
    assert.equals("ready\ncleaning\n", out)
    assert.matches("terminated twice, exiting now", err)
    assert.is_true(elapsed < 5, "took " .. elapsed .. " s")
  end)

  it("a tide.signal watcher replaces the default; closing it restores it", function()
    local out, err, rc = child([[
      local tide = require "tide"
      io.stdout:setvbuf("no")
      local term = tide.signal("SIGTERM")
      print("ready")
      print(term:wait())
      term:close()
      print("closed")
      local ok, e = pcall(tide.sleep, 30)
      print("cleanup", e.message)
      error(e, 0)
    ]], { "wait ready", "kill -TERM $pid", "wait closed", "kill -TERM $pid" })
    assert.equals(143, rc, err)
    assert.equals("ready\nSIGTERM\nclosed\ncleanup\tterminated (SIGTERM)\n", out)
  end)

  it("watchers take Ctrl-C and SIGUSR1 from their defaults too", function()
    local out, err, rc = child([[
      local tide = require "tide"
      io.stdout:setvbuf("no")
      local int <close> = tide.signal("INT")
      local usr1 <close> = tide.signal("USR1")
      print("ready")
      print(int:wait())
      print(usr1:wait())
      print(int:wait())
    ]], { "wait ready", "kill -INT $pid", "kill -USR1 $pid", "wait SIGUSR1", "kill -INT $pid" })
    assert.equals(0, rc, err)
    assert.equals("ready\nSIGINT\nSIGUSR1\nSIGINT\n", out)
    assert.equals("", err) -- no task dump, no "interrupted"
  end)

  it("a task waiting for a signal keeps the process alive; an idle watcher does not", function()
    local out, err, rc = child([[
      local tide = require "tide"
      io.stdout:setvbuf("no")
      local idle = tide.signal("SIGUSR2")
      local s = tide.signal("SIGUSR1")
      print("ready")
      print(s:wait())
    ]], { "wait ready", "sleep 0.2", "kill -USR1 $pid" })
    assert.equals(0, rc, err)
    assert.equals("ready\nSIGUSR1\n", out)
    local _, err2, rc2 = child([[
      local tide = require "tide"
      local idle = tide.signal("SIGUSR2")
      tide.Event():wait()
    ]], {})
    assert.equals(1, rc2)
    assert.matches("deadlock", err2)
  end)
end)
