-- Specs for the `tide` command: a Lua 5.4 interpreter whose main chunk
-- runs as a task. Each spec runs the real binary in a child process.
local tide = require "tide"

local TIDE = os.getenv("TIDE_BIN") or "./build/tide"

local function tmpfile(content)
  local name = os.tmpname()
  local f = assert(io.open(name, "w"))
  f:write(content)
  f:close()
  return name
end

-- Runs a shell command line; returns stdout, stderr, exit code.
local function sh(cmd)
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

local function run(script, args, env)
  local name = tmpfile(script)
  local out, err, rc = sh((env or "") .. " " .. TIDE .. " " .. name .. " " .. (args or ""))
  os.remove(name)
  return out, err, rc
end

describe("tide command", function()
  it("builds arg exactly as lua5.4 does and passes the arguments as ...", function()
    local out, err, rc = run([[
      print(arg[0]:match("[^/]+$") ~= nil, arg[1], arg[2], #arg, select("#", ...), ...)
      print(arg[-1] ~= nil)
    ]], "a 'b c'")
    assert.equals(0, rc, err)
    assert.equals("true\ta\tb c\t2\t2\ta\tb c\ntrue\n", out)
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
    assert.matches("^tide %d+%.%d+%.%d+ %(Lua 5%.4", out)
  end)

  it("- reads the script from stdin", function()
    local out, err, rc = sh("echo 'print(1 + 1, ...)' | " .. TIDE .. " - x")
    assert.equals(0, rc, err)
    assert.equals("2\tx\n", out)
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
    assert.matches("in task 'worker' %(spawned at [^)]+:3 by task 1%)", err)
  end)

  it("reports a syntax error like lua5.4, exit 1", function()
    local _, err, rc = run("x = = 1")
    assert.equals(1, rc)
    assert.matches("unexpected symbol near '='", err)
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
