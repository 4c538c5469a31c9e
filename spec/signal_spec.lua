-- Specs for tide.signal: signals sent to this very process (kill on our own
-- pid) and received by watchers. SIGINT and SIGTERM, whose defaults end the
-- run, are exercised on child processes in cli_spec.lua.
local tide = require "tide"
local S = require "spec.support"

local PID = assert(io.open("/proc/self/stat")):read("a"):match("^(%d+)")

-- Sends the signal to this process; it is caught (a watcher must be open)
-- before os.execute returns, and the loop dispatches it on its next turn.
local function kill(sig)
  assert(os.execute("kill -" .. sig .. " " .. PID))
end

local function wait_on(s, seconds)
  return tide.wait_for(function() return s:wait() end, seconds or 2)
end

describe("tide.signal", function()
  it("wait() suspends the task until the signal is delivered", function()
    local s <close> = tide.signal("SIGUSR1")
    local t = tide.spawn(function() return s:wait() end)
    S.turns()
    assert.is_false(t:done())
    kill("USR1")
    assert.equals("SIGUSR1", S.await(t))
  end)

  it("counts deliveries made while nobody waits, from its creation on", function()
    local s <close> = tide.signal("SIGUSR2")
    kill("USR2")
    kill("USR2")
    tide.sleep(0.05)
    local late <close> = tide.signal("SIGUSR2")
    assert.equals("SIGUSR2", wait_on(s))
    assert.equals("SIGUSR2", wait_on(s))
    assert.equals("timeout", (S.errkind(wait_on, s, 0.1)))
    assert.equals("timeout", (S.errkind(wait_on, late, 0.1)))
  end)

  it("several watchers of one signal each get every delivery", function()
    local a <close> = tide.signal("SIGHUP")
    local b <close> = tide.signal(1)
    kill("HUP")
    assert.equals("SIGHUP", wait_on(a))
    assert.equals("SIGHUP", wait_on(b))
  end)

  it("accepts SIGUSR1, USR1, usr1 or the number", function()
    for _, name in ipairs({ "SIGUSR1", "USR1", "usr1", "sigUsr1", 10 }) do
      local s <close> = tide.signal(name)
      assert.equals("tide.Signal(SIGUSR1)", tostring(s))
    end
    local rt <close> = tide.signal(40) -- a real-time signal: its number
    assert.equals("tide.Signal(40)", tostring(rt))
    kill("40")
    assert.equals(40, wait_on(rt))
  end)

  it("refuses unknown names, signals it cannot wait for and other types", function()
    S.raises_matching("bad argument #1 to 'signal' (unknown signal 'SIGFOO'", tide.signal, "SIGFOO")
    S.raises_matching("KILL cannot be waited for (SIGKILL and SIGSTOP cannot be caught", tide.signal, "KILL")
    S.raises_matching("SIGPIPE cannot be waited for", tide.signal, "SIGPIPE")
    S.raises_matching("SIGSEGV cannot be waited for (a fault signal", tide.signal, "SIGSEGV")
    for _, name in ipairs({ "SIGURG", "IO", "SIGXCPU", "SIGXFSZ", "SIGPROF", "SIGVTALRM" }) do
      tide.signal(name):close() -- not faults: asyncio takes any but SIGKILL and SIGSTOP
    end
    local ok, e = pcall(function() tide.signal("SIGFOO") end)
    assert.is_false(ok)
    assert.matches("^spec/signal_spec.lua:%d+: bad argument #1 to 'signal'", e)
    S.raises_matching("bad argument #1 to 'signal' (signal 9 cannot be waited for", tide.signal, 9)
    S.raises_matching("signal 11 cannot be waited for", tide.signal, 11)
    S.raises_matching("signal 1.5 cannot be waited for", tide.signal, 1.5)
    S.raises_matching("bad argument #1 to 'signal' (signal name or number expected, got table)",
      tide.signal, {})
    S.raises_matching("expected, got no value", tide.signal)
  end)

  it("close() ends a wait in progress with nil; a closed watcher refuses wait", function()
    local s = tide.signal("SIGUSR1")
    local t = tide.spawn(function() return s:wait() end)
    S.turns()
    s:close()
    s:close()
    assert.is_nil(S.await(t))
    assert.equals("tide.Signal(SIGUSR1, closed)", tostring(s))
    assert.equals("closed", (S.errkind(s.wait, s)))
  end)

  it("<close> closes it", function()
    local kept
    do
      local s <close> = tide.signal("SIGUSR1")
      kept = s
    end
    assert.equals("tide.Signal(SIGUSR1, closed)", tostring(kept))
  end)

  it("one task waits at a time", function()
    local s <close> = tide.signal("SIGUSR1")
    local t = tide.spawn(function() return s:wait() end)
    S.turns()
    local ok, e = pcall(s.wait, s)
    assert.is_false(ok)
    assert.equals("invalid_state", e.kind)
    assert.matches("another task is already waiting", e.message)
    kill("USR1")
    assert.equals("SIGUSR1", S.await(t))
  end)

  it("a cancelled wait just stops waiting; the watcher keeps counting", function()
    local s <close> = tide.signal("SIGUSR1")
    local t = tide.spawn(function() return s:wait() end)
    S.turns()
    t:cancel()
    assert.equals("cancelled", (S.errkind(S.await, t)))
    kill("USR1")
    assert.equals("SIGUSR1", wait_on(s))
  end)

  it("a watcher nobody holds is collected", function()
    local weak = setmetatable({}, { __mode = "v" })
    weak[1] = tide.signal("SIGUSR1")
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak[1])
    local s <close> = tide.signal("SIGUSR1") -- and the signal still works
    kill("USR1")
    assert.equals("SIGUSR1", wait_on(s))
  end)

  it("must be called from inside a task", function()
    local ok, err
    tide.call_soon(function() ok, err = pcall(tide.signal, "SIGUSR1") end)
    tide.sleep(0.01)
    assert.is_false(ok)
    assert.matches("must be called from inside a task", err)
  end)
end)
