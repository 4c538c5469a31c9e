-- Specs for the `tide` REPL (`tide -i`, or `tide` alone on a terminal).
-- Sessions run on a pseudo-terminal made by util-linux `script`, whose
-- input is fed by a shell pipeline: each piece after a pause, so that it
-- reaches the REPL while it waits at the prompt (Ctrl-C and Ctrl-D are
-- only keys there). The transcript holds the terminal's echo of the input
-- too; "\r" is removed. TIDE_HISTORY is unset unless a spec sets it.
local TIDE = require("spec.support").tide_bin()

local CTRL_C, CTRL_D, UP = "\3", "\4", "\27[A"

local q = require("spec.support").shell_quote

local sh = require("spec.support").sh

-- steps: { {pause_seconds, text}, ... }. Returns transcript, exit code,
-- seconds the session took.
local function session(args, steps, env)
  local feed = {}
  for _, s in ipairs(steps) do
    feed[#feed + 1] = string.format("sleep %s; printf '%%s' %s", s[1], q(s[2]))
  end
  feed[#feed + 1] = "sleep 0.5"
  -- "exec": script runs the command through $SHELL -c, /bin/sh when SHELL
  -- is unset (as in CI); dash then waits in the terminal's foreground
  -- group, gets each Ctrl-C too, and exits 130 when tide ends.
  local cmd = string.format("(%s) | env -u TIDE_HISTORY %s timeout 30 script -qfec %s /dev/null",
    table.concat(feed, "; "), env or "", q("exec " .. TIDE .. " " .. args))
  local t0 = os.time()
  local out, _, rc = sh(cmd)
  return (out:gsub("\r", "")), rc, os.time() - t0
end

local function has(out, s)
  return out:find(s, 1, true) ~= nil
end

local tmpfile = require("spec.support").tmpfile

describe("tide REPL on a terminal", function()
  it("prints =expr and bare expressions, reads multi-line chunks with '>> '", function()
    local out, rc = session("-i", {
      { 0.5, "=1+1\n" },
      { 0.2, "1+2\n" },
      { 0.2, "function f(x)\n" },
      { 0.2, "  return x * 10\n" },
      { 0.2, "end\n" },
      { 0.2, "f(4)\n" },
      { 0.2, "print('é', #'é')\n" },
    })
    assert.equals(0, rc, out)
    assert.matches("^Lua 5%.4[^\n]*\ntide %d+%.%d+%.%d+\n", out)
    assert.is_true(has(out, "> =1+1\n2\n"), out)
    assert.is_true(has(out, "> 1+2\n3\n"), out)
    assert.is_true(has(out, "> function f(x)\n>>   return x * 10\n>> end\n> f(4)\n40\n"), out)
    assert.is_true(has(out, "é\t2\n"), out)
  end)

  it("`tide` with no script on a terminal starts the REPL too", function()
    local out, rc = session("", { { 0.5, "=6*7\n" } })
    assert.equals(0, rc, out)
    assert.matches("^Lua 5%.4[^\n]*\ntide %d+%.%d+%.%d+", out)
    assert.is_true(has(out, "\n42\n"), out)
  end)

  it("runs each line in the main task, where tide.sleep works", function()
    local out, rc = session("-i", {
      { 0.5, "t0 = tide.time()\n" },
      { 0.2, "tide.sleep(0.2)\n" },
      { 0.4, "=tide.time() - t0 >= 0.2, tide.current_task().name\n" },
    })
    assert.equals(0, rc, out)
    assert.is_true(has(out, "\ntrue\tmain\n"), out)
  end)

  it("tasks spawned by a line keep running between lines, while the prompt waits", function()
    local out, rc = session("-i", {
      { 0.5, "tide.spawn(function() tide.sleep(0.1) y = 42 end)\n" },
      -- the REPL sits at the prompt meanwhile: the task must run then
      { 0.6, "=y\n" },
      { 0.2, "tide.spawn(function() tide.sleep(0.1) z = 'set' end)\n" },
      { 0, "tide.sleep(0.3) print(z)\n" },
    })
    assert.equals(0, rc, out)
    assert.is_true(has(out, "> =y\n42\n"), out)
    assert.is_true(has(out, "\nset\n"), out)
  end)

  it("an error prints a traceback and the session goes on", function()
    local out, rc = session("-i", {
      { 0.5, "error('boom')\n" },
      { 0.2, "x = = 1\n" },
      { 0.2, "=5*5\n" },
    })
    assert.equals(0, rc, out)
    assert.matches("stdin:1: boom\nstack traceback:\n.-stdin:1: in main chunk\n", out)
    assert.not_matches("repl%.lua", out) -- the REPL's own frames are cut
    assert.is_true(has(out, "unexpected symbol near '='"), out)
    assert.is_true(has(out, "\n25\n"), out)
  end)

  it("Ctrl-D on an empty line exits 0 (tasks left are cancelled)", function()
    local out, rc, took = session("-i", {
      { 0.5, "tide.spawn(tide.sleep, 60)\n" },
      { 0.3, CTRL_D },
      { 0, "print('not read')\n" },
    })
    assert.equals(0, rc, out)
    assert.is_false(has(out, "\nnot read\n"), out)
    assert.is_true(took < 10, out)
  end)

  it("Ctrl-C cancels the running line, keeps the REPL; at the prompt it drops the line", function()
    local out, rc, took = session("-i", {
      { 0.5, "tide.spawn(function() tide.sleep(0.8) w = 'kept' end)\n" },
      { 0.2, "tide.sleep(20) print('not cancelled')\n" },
      { 0.4, CTRL_C },
      { 0.3, "error('typed')" },
      { 0.3, CTRL_C },
      { 0.3, "tide.sleep(20)\n" }, -- a second interrupted line: no exit
      { 0.4, CTRL_C },
      { 0.5, "=w\n" },
    })
    assert.equals(0, rc, out)
    assert.is_true(took < 15, out)
    assert.is_false(has(out, "not cancelled\n"), out)
    local _, n = out:gsub("cancelled: interrupted", "")
    assert.equals(2, n, out)
    assert.is_false(has(out, "stdin:1: typed"), out)
    assert.is_true(has(out, "> =w\nkept\n"), out) -- the spawned task was not cancelled
  end)

  it("keeps a history: the up arrow recalls a line; TIDE_HISTORY saves it", function()
    local hist = os.tmpname()
    local out, rc = session("-i", {
      { 0.5, "=6*7\n" },
      { 0.3, UP .. "\n" },
    }, "TIDE_HISTORY=" .. hist)
    local f = assert(io.open(hist))
    local saved = f:read("a")
    f:close()
    os.remove(hist)
    assert.equals(0, rc, out)
    local _, n = out:gsub("\n42\n", "")
    assert.equals(2, n, out)
    assert.is_true(has(saved, "=6*7"), saved)
  end)

  it("SIGTERM ends the session (143): at the prompt, in a running line, and when the line catches it", function()
    local pid = "io.open('/proc/self/stat'):read('a'):match('^%d+')"
    local kill = "os.execute('kill -TERM ' .. " .. pid .. ")"
    local out, rc = session("-i", { -- at the prompt: a task sends it
      { 0.5, "tide.spawn(function() tide.sleep(0.3) " .. kill .. " end)\n" },
      { 1.5, "print('not read')\n" },
    })
    assert.equals(143, rc, out)
    assert.is_false(has(out, "\nnot read\n"), out)
    out, rc = session("-i", { -- in a running line
      { 0.5, kill .. " tide.sleep(5) print('not cancelled')\n" },
      { 1.5, "print('not read')\n" },
    })
    assert.equals(143, rc, out)
    assert.is_false(has(out, "not cancelled\n"), out)
    out, rc = session("-i", { -- a line that catches it
      { 0.5, "tide.spawn(function() tide.sleep(0.2) " .. kill .. " end) print(pcall(tide.sleep, 3)) print('caught')\n" },
      { 1.5, "print('not read')\n" },
    })
    assert.equals(143, rc, out)
    assert.is_true(has(out, "caught\n"), out)
    assert.is_false(has(out, "\nnot read\n"), out)
  end)

  it("writes the history file as it grows (a session killed keeps its lines)", function()
    local hist = os.tmpname()
    local pid = "io.open('/proc/self/stat'):read('a'):match('^%d+')"
    session("-i", {
      { 0.5, "=6*7\n" },
      { 0.3, "os.execute('kill -KILL ' .. " .. pid .. ")\n" },
    }, "TIDE_HISTORY=" .. hist)
    local f = assert(io.open(hist))
    local saved = f:read("a")
    f:close()
    os.remove(hist)
    assert.is_true(has(saved, "=6*7"), saved)
  end)

  it("an error object with __tostring is reported by that text alone, as lua5.4", function()
    local out, rc = session("-i", { { 0.5, "error(setmetatable({}, {__tostring = function() return 'TS' end}))\n" } })
    assert.equals(0, rc, out)
    assert.is_true(has(out, "\nTS\n> "), out)
    assert.is_false(has(out, "stack traceback"), out)
  end)

  it("bare `tide` runs LUA_INIT before the banner, as lua5.4", function()
    local out, rc = session("", { { 0.5, "=1\n" } }, "LUA_INIT='print(\"init ran\")'")
    assert.equals(0, rc, out)
    assert.matches("^init ran\nLua 5%.4", out)
  end)

  it("tide -i script runs the script first", function()
    local name = tmpfile("greeting = 'hello from ' .. arg[0]:match('[^/]*$')\n")
    local out, rc = session("-i " .. name, { { 0.5, "=greeting\n" } })
    os.remove(name)
    assert.equals(0, rc, out)
    assert.matches("\nhello from [^\n]+\n", out)
  end)
end)

describe("tide REPL without a terminal", function()
  it("tide -i reads lines from a pipe, printing prompts and results", function()
    local out, _, rc = sh("printf '=1+1\\nfunction g()\\nreturn 9 end\\n=g()\\nerror(\"bad\")\\n=3\\n' | "
      .. TIDE .. " -i 2>&1")
    assert.equals(0, rc, out)
    assert.matches("^Lua 5%.4[^\n]+\ntide [^\n]+\n> 2\n> >> > 9\n> stdin:1: bad\n.*> 3\n> \n$", out) -- errors without the program's name, as lua5.4's
  end)

  it("says a to_thread worker's error was re-raised from the worker, as the command does", function()
    local out = sh("printf 'require(\"tide\").to_thread(function() error(\"w\") end)\n' | "
      .. TIDE .. " -i 2>&1")
    assert.matches("re-raised from the to_thread worker:", out, 1, true) -- it said "awaited task"
  end)

  it("a line's io.read() reads the input that follows it, as under lua5.4", function()
    local out, _, rc = sh("printf 'x = io.read()\\nhello\\n=x\\n' | " .. TIDE .. " -i 2>&1")
    assert.equals(0, rc, out)
    assert.matches("\n> > hello\n> \n$", out)
  end)

  it("tide -i reads lines from a file", function()
    local name = tmpfile("x = 20\n=x + 1\ntide.sleep(0.01)\n=tide.current_task().name")
    local out, _, rc = sh(TIDE .. " -i < " .. name)
    os.remove(name)
    assert.equals(0, rc, out)
    assert.matches("^Lua 5%.4[^\n]+\ntide [^\n]+\n> > 21\n> > main\n> \n$", out)
  end)
end)
