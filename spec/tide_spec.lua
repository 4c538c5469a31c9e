-- Specs for the tide module: tasks, time, waiting for many, timeouts and
-- cancellation. They run inside the tide host: bodies may suspend.
local tide = require "tide"

local S = require "spec.support"
local virtual, errkind = S.virtual, S.errkind

describe("tide.run", function()
  it("closes its loop when a task ends in the callbacks run after the shutdown (no loop left stopped)", function()
    local lfs = require "lfs"
    local function fds() local n = 0; for _ in lfs.dir("/proc/self/fd") do n = n + 1 end; return n end
    local base = fds()
    for _ = 1, 20 do
      tide.run(function()
        local t = tide.spawn(tide.sleep, 10)
        t:add_done_callback(function() tide.spawn(function() end) end) -- runs in the drain
        tide.sleep(0)
      end)
    end
    assert.equals(base, fds())
  end)

  it("runs the round after main's end even when main ended with the loop turn's budget spent", function()
    local seen
    tide.run(function()
      local me = tide.current_task()
      for _ = 1, 5000 do tide.spawn(function() while true do tide.sleep(0) end end) end
      tide.spawn(function() seen = pcall(me.await, me) and "main done" or "cancelled" end)
      tide.sleep(0)
      tide.sleep(0)
    end)
    assert.equals("main done", seen)
  end)

  it("runs the done callbacks of the tasks it cancels at the end, as asyncio.run", function()
    local seen
    tide.run(function()
      local x = tide.spawn(tide.sleep, 10)
      x:add_done_callback(function(t) seen = t:cancelled() end)
      tide.sleep(0)
    end)
    assert.is_true(seen)
  end)

  it("stops its loop one round after the main task ends, as asyncio.run: then the tasks left are cancelled", function()
    local log = {}
    tide.run(function()
      tide.spawn(function()
        for i = 0, 4 do
          log[#log + 1] = i
          if not pcall(tide.sleep, 0) then log[#log + 1] = "cancelled"; return end
        end
      end)
      tide.sleep(0)
    end)
    assert.same({ 0, 1, "cancelled" }, log)
  end)

  it("returns all of fn's results", function()
    local a, b, c = tide.run(function(x) return x, nil, 3 end, 1)
    assert.equals(1, a)
    assert.is_nil(b)
    assert.equals(3, c)
  end)

  it("re-raises fn's error value unchanged", function()
    local err = { "mine" }
    local ok, e = pcall(tide.run, function() error(err) end)
    assert.is_false(ok)
    assert.equals(err, e)
  end)

  it("cancels tasks still running when fn returns, letting them clean up", function()
    local cleaned = false
    tide.run(function()
      tide.spawn(function()
        local ok, e = pcall(tide.sleep, 100)
        cleaned = not ok and e.kind == "cancelled"
        error(e, 0)
      end)
      tide.sleep(0)
    end)
    assert.is_true(cleaned)
  end)

  it("with a virtual clock, an hour of sleeping takes no time", function()
    local t0 = os.clock()
    local elapsed = virtual(function()
      local s = tide.time()
      tide.sleep(3600)
      tide.gather(function() tide.sleep(1800) end, function() tide.sleep(7200) end)
      return tide.time() - s
    end)
    assert.is_true(math.abs(elapsed - 3600 - 7200) < 1e-6, tostring(elapsed))
    assert.is_true(os.clock() - t0 < 1)
  end)

  it("rejects a bad clock option", function()
    assert.has_error(function() tide.run({ clock = "fast" }, print) end)
  end)

  it("needs a function", function()
    local ok, e = pcall(tide.run, 42)
    assert.is_false(ok)
    assert.matches("bad argument #1 to '[%w.]*run' %(function expected, got number%)", e)
  end)

  it("is refused in a loop callback, and calls that need a loop are refused outside one, as kind invalid_state", function()
    local e
    tide.call_soon(function() e = select(2, pcall(tide.run, print)) end)
    tide.sleep(0.01)
    assert.equals("invalid_state", e.kind)
    -- lua5.4 with tide.so, no run going on
    local lua54 = S.tide_bin():gsub("tide$", "lua54-tide")
    local r = require("tide.process").run({ lua54, "-e", [[
      local tide = require "tide"
      for _, f in ipairs { function() tide.spawn(print) end, function() tide.call_soon(print) end,
          function() tide.call_later(1, print) end } do
        local _, e = pcall(f)
        print(tide.iserror(e) and e.kind, tide.iserror(e) and e.message)
      end]] })
    assert.equals("invalid_state\t(command line):2: spawn: no loop is running (call it inside tide.run or from a task)\n"
      .. "invalid_state\t(command line):2: call_soon: no loop is running (call it inside tide.run or from a task)\n"
      .. "invalid_state\t(command line):3: call_later: no loop is running (call it inside tide.run or from a task)\n",
      r.stdout)
  end)

  it("reports a deadlock instead of hanging", function()
    local kind = errkind(tide.run, function() tide.Event():wait() end)
    assert.equals("deadlock", kind)
  end)

  it("a main task that catches the deadlock error can go on", function()
    local r = tide.run(function()
      local q = tide.Queue()
      local g = tide.spawn(q.get, q)
      local kinds = {}
      for i = 1, 3 do
        local ok, e = pcall(g.await, g)
        kinds[i] = e.kind
      end
      q:put("x")
      return table.concat(kinds, ","), g:await()
    end)
    assert.equals("deadlock,deadlock,deadlock", r)
  end)
end)

describe("tide.spawn", function()
  it("passes hundreds of arguments", function()
    local args = {}
    for i = 1, 300 do args[i] = i end
    local t = tide.spawn(function(...) return select("#", ...), (select(300, ...)) end, table.unpack(args))
    local n, last = t:await()
    assert.equals(300, n)
    assert.equals(300, last)
  end)

  it("starts the task on the next loop turn, not at once", function()
    local started = false
    local t = tide.spawn(function() started = true end)
    assert.is_false(started)
    t:await()
    assert.is_true(started)
  end)

  it("passes arguments and names tasks", function()
    local t = tide.spawn({ name = "worker" }, function(a, b) return a + b end, 2, 3)
    assert.equals("worker", t.name)
    assert.equals(5, t:await())
    local u = tide.spawn(function() end)
    assert.matches("^Task%-%d+$", u.name)
    u.name = "renamed"
    assert.equals("renamed", u.name)
    u:await()
  end)

  it("passes every argument, nils included, however many there are", function()
    local function count(...)
      local p = { select("#", ...) }
      for i = 1, select("#", ...) do p[#p + 1] = tostring((select(i, ...))) end
      return table.concat(p, ",")
    end
    local cases = { {}, { nil }, { 1, nil }, { nil, 2, nil }, { 1, 2, 3, nil }, { 1, 2, 3, 4, 5 } }
    local ns = { 0, 1, 2, 3, 4, 5 }
    local ts = {}
    for i, c in ipairs(cases) do ts[i] = tide.spawn(count, table.unpack(c, 1, ns[i])) end
    local cancelled = tide.spawn(count, 1, 2) -- cancelled before it starts
    cancelled:cancel()
    assert.equals("0 1,nil 2,1,nil 3,nil,2,nil 4,1,2,3,nil 5,1,2,3,4,5",
      table.concat(tide.gather(ts), " "))
    assert.equals("cancelled", errkind(function() cancelled:await() end))
  end)

  it("checks its arguments", function()
    local ok, e = pcall(tide.spawn, "nope")
    assert.is_false(ok)
    assert.matches("bad argument #1 to '[%w.]*spawn' %(function expected, got string%)", e)
  end)

  it("runs three 1 s tasks concurrently in about 1 s", function()
    local function task(name, delay) tide.sleep(delay); return name .. " done" end
    local t0 = tide.time()
    local r = tide.gather(tide.spawn(task, "A", 1), tide.spawn(task, "B", 1), tide.spawn(task, "C", 1))
    local dt = tide.time() - t0
    assert.same({ "A done", "B done", "C done" }, r) -- a plain array, as asyncio's list
    assert.is_true(dt >= 0.99 and dt < 1.5, tostring(dt))
  end)
end)

describe("Task", function()
  it("a task cancelled twice before it started ends with the last message, as asyncio's", function()
    local t = tide.spawn(function() return 1 end)
    assert.is_true(t:cancel("m1"))
    assert.is_true(t:cancel("m2"))
    local ok, e = pcall(t.await, t)
    assert.is_false(ok)
    assert.equals("cancelled", e.kind)
    assert.equals("m2", e.message)
  end)

  it("a task cancelled twice as it resumes or by itself sees the last message, one cancelled where it waits the first, as asyncio's", function()
    local function caught(fn, ...) local _, e = pcall(fn, ...) return e.message end
    -- itself, twice
    local t = tide.spawn(function()
      local me = tide.current_task()
      me:cancel("m1"); me:cancel("m2")
      return caught(tide.sleep, 0)
    end)
    assert.equals("m2", t:await())
    -- in sleep(0)
    t = tide.spawn(caught, tide.sleep, 0)
    tide.call_soon(function() t:cancel("x1"); t:cancel("x2") end)
    assert.equals("x2", t:await())
    -- woken by an Event, not resumed yet
    local ev = tide.Event()
    t = tide.spawn(caught, ev.wait, ev)
    tide.sleep(0.01)
    ev:set(); t:cancel("w1"); t:cancel("w2")
    assert.equals("w2", t:await())
    -- cancelled where it waits: the first
    t = tide.spawn(caught, tide.sleep, 10)
    tide.sleep(0.01)
    t:cancel("p1"); t:cancel("p2")
    assert.equals("p1", t:await())
    -- cancelled itself, then waited: its own cancel took it out of the wait first
    t = tide.spawn(function()
      tide.current_task():cancel("s1")
      return caught(tide.sleep, 10)
    end)
    tide.sleep(0)
    t:cancel("s2")
    assert.equals("s1", t:await())
  end)

  it(":await() returns every result", function()
    local t = tide.spawn(function() tide.sleep(0); return 1, nil, "x" end)
    local a, b, c = t:await()
    assert.same({ 1, nil, "x" }, { a, b, c })
    assert.equals(1, (t:await())) -- again, once done
  end)

  it(":await() re-raises the task's error value as it was", function()
    local t = tide.spawn(function() error("boom") end)
    local ok, e = pcall(t.await, t)
    assert.is_false(ok)
    assert.matches("tide_spec.lua:%d+: boom$", e)
    local obj = setmetatable({}, { __tostring = function() return "obj" end })
    local u = tide.spawn(function() error(obj) end)
    local ok2, e2 = pcall(u.await, u)
    assert.is_false(ok2)
    assert.equals(obj, e2)
  end)

  it(":await() on itself is an error of kind invalid_state, at the caller's line", function()
    local me = tide.current_task()
    local kind, e = errkind(function() me:await() end)
    assert.equals("invalid_state", kind)
    assert.matches("^spec/tide_spec.lua:%d+: a task cannot await itself", e.message)
  end)

  it("suspending calls outside a task raise kind invalid_state", function()
    local kinds = {}
    tide.call_soon(function()
      for _, f in ipairs { function() tide.sleep(0) end, function() tide.gather() end,
                           function() tide.wait_for(function() end, 1) end,
                           function() tide.Event():wait() end } do
        local ok, e = pcall(f)
        kinds[#kinds + 1] = not ok and tide.iserror(e) and e.kind or tostring(e)
      end
    end)
    tide.sleep(0.01)
    assert.same({ "invalid_state", "invalid_state", "invalid_state", "invalid_state" }, kinds)
  end)

  it("current_task() is nil in a callback: one value, as asyncio's None (it gave none)", function()
    local n, v = -1, false
    tide.call_soon(function() n, v = select("#", tide.current_task()), tide.current_task() end)
    tide.sleep(0.01)
    assert.equals(1, n)
    assert.is_nil(v)
  end)

  it(":done(), :result(), :error(), :cancelled()", function()
    local t = tide.spawn(function() tide.sleep(0.01); return "r" end)
    assert.is_false(t:done())
    assert.equals("invalid_state", errkind(t.result, t))
    t:await()
    assert.is_true(t:done())
    assert.equals("r", t:result())
    assert.is_nil(t:error())
    assert.equals(1, select("#", t:error())) -- nil, as asyncio's None: tostring(t:error()) works
    assert.is_false(t:cancelled())
    local f = tide.spawn(function() error("bad", 0) end)
    tide.sleep(0); tide.sleep(0)
    assert.equals("bad", f:error())
    local ok, e = pcall(f.result, f)
    assert.is_false(ok)
    assert.equals("bad", e)
  end)

  it(":traceback() of a failed task names the failing line and the task", function()
    local t = tide.spawn({ name = "failing" }, function() local x = nil; return x.y end)
    pcall(t.await, t)
    local tb = t:traceback()
    assert.matches("attempt to index a nil value", tb)
    assert.matches("stack traceback", tb)
    assert.matches("in task 'failing' %(spawned at [^)]*tide_spec.lua:%d+ by task [^)]+%)", tb)
  end)

  it(":traceback() shows the awaited task's only when an await raised that error in the task", function()
    local inner = tide.spawn({ name = "inner" }, function() error("boom", 0) end)
    local outer = tide.spawn({ name = "outer" }, function() inner:await() end)
    pcall(outer.await, outer)
    local tb = outer:traceback()
    assert.truthy(tb:find("re-raised from the awaited task", 1, true))
    assert.matches("in task 'inner'", tb)
    -- another task failing with an equal error re-raised nothing: its own traceback alone
    local other = tide.spawn({ name = "other" }, function() error("boom", 0) end)
    pcall(other.await, other)
    assert.is_nil(other:traceback():find("re-raised", 1, true))
    assert.is_nil(other:traceback():find("'inner'", 1, true))
    -- a task that caught an awaited error and then fails in a to_thread worker
    -- shows the worker's traceback, not the awaited one
    local mixed = tide.spawn(function()
      local f = tide.spawn(function() error("first", 0) end)
      pcall(f.await, f)
      tide.to_thread(function() error("worker boom") end)
    end)
    pcall(mixed.await, mixed)
    assert.truthy(mixed:traceback():find("re-raised from the to_thread worker", 1, true))
    -- and failures repeated with one message do not pile up tracebacks
    local size
    for i = 1, 300 do
      pcall(tide.wait_for, function() error("connection failed", 0) end, 5)
      local t = tide.spawn(function() error("connection failed", 0) end)
      pcall(t.await, t)
      if i == 10 then size = #t:traceback() end
      if i == 300 then assert.is_true(#t:traceback() <= size + 2, "tracebacks grew") end -- Task-N's digits
    end
  end)

  it("a task that gather or wait_for spawned names the user's line as its spawn site", function()
    local child
    local ok = pcall(tide.gather, function() child = tide.current_task(); error("x") end)
    assert.is_false(ok)
    assert.matches("spawned at [^)]*tide_spec.lua:%d+ by task", child:traceback())
    local t = tide.spawn(function() error("y") end)
    pcall(tide.wait_for, t, 1)
    assert.matches("spawned at [^)]*tide_spec.lua:%d+ by task", t:traceback())
  end)

  it("tostring shows the name and state", function()
    local t = tide.spawn({ name = "x" }, tide.sleep, 0.01)
    assert.equals("tide.Task<x, pending>", tostring(t))
    tide.sleep(0)
    assert.equals("tide.Task<x, waiting>", tostring(t))
    t:await()
    assert.equals("tide.Task<x, done>", tostring(t))
  end)

  it(":cancel() before the task starts: it never runs", function()
    local ran = false
    local t = tide.spawn(function() ran = true end)
    assert.is_true(t:cancel())
    local kind = errkind(t.await, t)
    assert.equals("cancelled", kind)
    assert.is_false(ran)
    assert.is_true(t:cancelled())
    assert.is_false(t:cancel()) -- done: nothing to cancel
  end)

  it(":cancel(msg) is delivered at the suspension point and may be caught to clean up", function()
    local log = {}
    local t = tide.spawn(function()
      local ok, e = pcall(tide.sleep, 10)
      log[#log + 1] = e.kind
      log[#log + 1] = e.message
      tide.sleep(0.01) -- cleanup may suspend
      log[#log + 1] = "cleaned"
      error(e, 0)
    end)
    tide.sleep(0)
    t:cancel("stop now")
    local kind = errkind(t.await, t)
    assert.equals("cancelled", kind)
    assert.same({ "cancelled", "stop now", "cleaned" }, log)
    assert.is_true(t:cancelled())
  end)

  it("a task that swallows its cancellation goes on and ends normally", function()
    local t = tide.spawn(function()
      pcall(tide.sleep, 10)
      tide.sleep(0)
      return "survived"
    end)
    tide.sleep(0)
    t:cancel()
    assert.equals("survived", t:await())
    assert.is_false(t:cancelled())
  end)

  it("cancelling a task in inner:await() cancels inner too, and ends when inner has (asyncio)", function()
    local cleaned = false
    local inner = tide.spawn(function()
      local ok, e = pcall(tide.sleep, 10)
      tide.sleep(0.01) -- clean-up that suspends
      cleaned = true
      error(e, 0)
    end)
    local outer = tide.spawn(function() return inner:await() end)
    tide.sleep(0.01)
    outer:cancel("stop")
    assert.equals("cancelled", errkind(outer.await, outer))
    assert.is_true(cleaned, "outer ended before inner finished cancelling")
    assert.is_true(inner:cancelled())
    assert.equals("stop", inner:error().message)
  end)

  it("tide.shield keeps the awaited task running when the awaiting task is cancelled", function()
    local inner = tide.spawn(tide.sleep, 0.05, "inner")
    local outer = tide.spawn(function() return tide.shield(inner) end)
    tide.sleep(0.01)
    outer:cancel()
    assert.equals("cancelled", errkind(outer.await, outer))
    assert.equals("inner", inner:await())
  end)

  it("a task that cancels itself and returns without suspending ends cancelled", function()
    local t = tide.spawn(function()
      tide.current_task():cancel("self")
      return "returned"
    end)
    assert.equals("cancelled", errkind(t.await, t))
    assert.is_true(t:cancelled())
    assert.equals("self", t:error().message)
  end)

  it("a task that cancels itself is cancelled at its next suspension", function()
    local t = tide.spawn(function()
      tide.current_task():cancel()
      local reached = true
      tide.sleep(0)
      return reached
    end)
    assert.equals("cancelled", errkind(t.await, t))
  end)

  it("a <close> task variable cancels the task at scope exit", function()
    local t
    do
      local c <close> = tide.spawn(tide.sleep, 10)
      t = c
      tide.sleep(0)
    end
    assert.equals("cancelled", errkind(t.await, t))
  end)

  it("<close> handlers of a cancelled or failing task run in the task and may suspend (async with)", function()
    local log = {}
    local function resource(name)
      return setmetatable({}, { __close = function(_, e)
        log[#log + 1] = name .. " closing in " .. tostring(tide.current_task() and tide.current_task().name)
        tide.sleep(0.005) -- clean-up that suspends, as __aexit__ may await
        log[#log + 1] = name .. " closed (" .. tostring(e and (e.kind or e)) .. ")"
      end })
    end
    local c = tide.spawn({ name = "victim" }, function()
      local r <close> = resource("c")
      tide.sleep(10)
    end)
    local f = tide.spawn({ name = "failing" }, function()
      local r <close> = resource("f")
      tide.sleep(0)
      error("boom", 0)
    end)
    tide.sleep(0)
    c:cancel()
    assert.equals("cancelled", errkind(c.await, c))
    assert.equals("boom", select(2, pcall(f.await, f)))
    table.sort(log)
    assert.same({ "c closed (cancelled)", "c closing in victim", "f closed (boom)", "f closing in failing" }, log)
  end)

  it("a task that fails or is cancelled closes its <close> variables", function()
    local closed = {}
    local function closer(name)
      return setmetatable({}, { __close = function(_, e) closed[name] = e or true end })
    end
    local f = tide.spawn(function()
      local c <close> = closer("failed")
      tide.sleep(0)
      error("boom", 0)
    end)
    local c = tide.spawn(function()
      local x <close> = closer("cancelled")
      tide.sleep(10)
    end)
    tide.sleep(0)
    c:cancel()
    pcall(f.await, f)
    pcall(c.await, c)
    assert.equals("boom", closed.failed)
    assert.equals("cancelled", closed.cancelled.kind)
  end)

  it(":add_done_callback() runs once the task is done", function()
    local seen
    local t = tide.spawn(function() return 7 end)
    t:add_done_callback(function(task) seen = task:result() end)
    t:await()
    assert.equals(7, seen)
    local late
    t:add_done_callback(function() late = true end)
    tide.sleep(0.001)
    assert.is_true(late)
  end)

  it(":remove_done_callback() removes every registration and says how many", function()
    local n = 0
    local function cb() n = n + 1 end
    local t = tide.spawn(tide.sleep, 0.001)
    t:add_done_callback(cb)
    t:add_done_callback(cb)
    assert.equals(2, t:remove_done_callback(cb))
    assert.equals(0, t:remove_done_callback(cb))
    assert.matches("bad argument #1 to 'remove_done_callback' %(function expected, got no value%)",
      select(2, pcall(function() t:remove_done_callback() end)))
    t:await()
    tide.sleep(0)
    assert.equals(0, n)
  end)
end)

describe("tide.sleep", function()
  it("sleep(0) between chunks of work lets I/O in within milliseconds, as asyncio polls every turn", function()
    local fs = require "tide.fs"
    local t0 = tide.time()
    local io_task = tide.spawn(function() fs.stat("/") return tide.time() - t0 end)
    for _ = 1, 15 do
      local c = os.clock()
      while os.clock() - c < 0.02 do end -- 20 ms of work, then yield
      tide.sleep(0)
    end
    local work = tide.time() - t0
    local io = io_task:await()
    assert.is_true(io < work / 2, ("the stat ended at %.3f s, the work at %.3f s"):format(io, work))
  end)

  it("returns its extra arguments", function()
    local a, b, c = tide.sleep(0, "a", nil, 3)
    assert.same({ "a", nil, 3 }, { a, b, c })
  end)

  it("sleep(0) lets other ready tasks run", function()
    local order = {}
    local t = tide.spawn(function() order[#order + 1] = "other" end)
    order[#order + 1] = "before"
    tide.sleep(0)
    order[#order + 1] = "after"
    assert.same({ "before", "other", "after" }, order)
    t:await()
  end)

  it("wakes sleepers in deadline order, ties in FIFO order", function()
    local order = {}
    local ts = {}
    for i, d in ipairs { 0.03, 0.01, 0.02, 0.01 } do
      ts[i] = tide.spawn(function() tide.sleep(d); order[#order + 1] = i end)
    end
    tide.gather(ts)
    assert.same({ 2, 4, 3, 1 }, order)
  end)

  it("waits at least the time asked", function()
    local t0 = tide.time()
    tide.sleep(0.05)
    assert.is_true(tide.time() - t0 >= 0.05)
  end)

  it("checks its argument", function()
    local ok, e = pcall(tide.sleep, "soon")
    assert.is_false(ok)
    assert.matches("bad argument #1 to '[%w.]*sleep' %(number expected, got string%)", e)
  end)

  it("outside a task says why it cannot suspend", function()
    local ok, e = pcall(function()
      local h = tide.call_soon(function() end)
      h:cancel()
    end)
    assert.is_true(ok, e)
    local co = coroutine.create(function() return tide.current_task() end)
    assert.is_true(coroutine.resume(co))
  end)
end)

describe("tide.time", function()
  it("is monotonic seconds", function()
    local a = tide.time()
    tide.sleep(0.01)
    local b = tide.time()
    assert.is_true(b > a)
    assert.equals("number", type(a))
  end)
end)

describe("tide.current_task / tide.all_tasks", function()
  it("know the running task and every live one", function()
    local inner
    local t = tide.spawn(function() inner = tide.current_task(); tide.sleep(0.01) end)
    tide.sleep(0)
    assert.equals(t, inner)
    local found = false
    for _, x in ipairs(tide.all_tasks()) do
      if x == t then found = true end
    end
    assert.is_true(found)
    t:await()
    for _, x in ipairs(tide.all_tasks()) do
      assert.are_not.equals(t, x)
    end
  end)
end)

describe("tide.call_soon / tide.call_later", function()
  it("run callbacks with their arguments, in order", function()
    local log = {}
    tide.call_later(0.02, function(x) log[#log + 1] = x end, "late")
    tide.call_soon(function(x, y) log[#log + 1] = x .. y end, "so", "on")
    tide.sleep(0.04)
    assert.same({ "soon", "late" }, log)
  end)

  it("done callbacks are scheduled, as asyncio's: tasks ready in that turn run first", function()
    local log = {}
    local a = tide.spawn(function() tide.sleep(0.02) log[#log + 1] = "a ends" end)
    local b = tide.spawn(function() tide.sleep(0.02) log[#log + 1] = "b runs" end)
    a:add_done_callback(function() log[#log + 1] = "cb"; b:cancel() end)
    pcall(b.await, b)
    assert.same({ "a ends", "b runs", "cb" }, log)
  end)

  it("call_soon callbacks run before timers due, even a call_later(0) made earlier", function()
    local log = {}
    tide.call_later(0, function() log[#log + 1] = "later0" end)
    tide.call_soon(function() log[#log + 1] = "soon" end)
    tide.sleep(0.01)
    assert.same({ "soon", "later0" }, log)
  end)

  it("call_soon runs on the next loop turn: before sleep(0) returns", function()
    local ran = false
    tide.call_soon(function() ran = true end)
    tide.sleep(0)
    assert.is_true(ran)
  end)

  it("call_soon callbacks still due when the main task ends run before the run closes", function()
    local ran = false
    tide.run(function() tide.call_soon(function() ran = true end) end)
    assert.is_true(ran)
  end)

  it("tasks and callbacks share one FIFO, in the order they became ready, as asyncio's", function()
    local log = {}
    local function add(x) log[#log + 1] = x end
    local function task(name) add(name); tide.sleep(0); add(name .. "2") end
    tide.spawn(task, "A")
    tide.call_soon(add, "B")
    tide.spawn(task, "C")
    tide.call_later(0, add, "L") -- a timer joins the queue's end when the next round starts
    tide.call_soon(add, "D")
    tide.sleep(0)
    add("main")
    tide.sleep(0.01)
    assert.same({ "A", "B", "C", "D", "main", "L", "A2", "C2" }, log)
  end)

  it("a timer that came due joins the queue behind the tasks and callbacks already ready", function()
    local log = {}
    local function add(x) log[#log + 1] = x end
    tide.spawn(function() tide.sleep(0.01); add("X") end)
    tide.sleep(0)
    local t0 = os.clock()
    while os.clock() - t0 < 0.03 do end -- X's timer is due now, the loop blocked
    tide.spawn(add, "Y")
    tide.call_soon(add, "cb")
    tide.sleep(0)
    add("main")
    tide.sleep(0.02)
    assert.same({ "Y", "cb", "main", "X" }, log)
  end)

  it("a callback due with a sleep's end runs before the sleeper wakes (asyncio's sleep is a timer callback)", function()
    local log = {}
    tide.run({ clock = "virtual" }, function()
      tide.spawn(function() tide.sleep(1); log[#log + 1] = "task" end)
      tide.sleep(0)
      tide.call_later(1, function() log[#log + 1] = "callback" end)
      tide.sleep(2)
    end)
    assert.same({ "callback", "task" }, log)
  end)

  it("a call_soon handle cancelled while queued never runs, and is kept until its turn", function()
    local ran = false
    local h = tide.call_soon(function() ran = true end)
    assert.is_true(h:cancel())
    h = nil
    collectgarbage()
    collectgarbage()
    tide.sleep(0)
    assert.is_false(ran)
    assert.is_nil(h)
  end)

  it("callbacks ready when the main task ends run, and the tasks left are cancelled", function()
    local log = {}
    tide.run(function()
      tide.spawn(function()
        local ok, e = pcall(tide.sleep, 10)
        log[#log + 1] = ok and "slept" or e.kind
      end)
      tide.sleep(0)
      tide.call_soon(function() log[#log + 1] = "cb" end)
    end)
    assert.same({ "cb", "cancelled" }, log)
  end)

  it("a cancelled handle never runs", function()
    local ran = false
    local h = tide.call_later(0.01, function() ran = true end)
    assert.is_true(h:cancel())
    assert.is_false(h:cancel())
    tide.sleep(0.02)
    assert.is_false(ran)
  end)
end)

describe("tide.gather", function()
  it("returns two loop turns after its last child ends, as asyncio's (child callback, then the outer future's)", function()
    local log = {}
    local ticker = tide.spawn(function()
      for i = 1, 5 do log[#log + 1] = "tick " .. i; tide.sleep(0) end
    end)
    local a = tide.spawn(function() log[#log + 1] = "a runs"; return 1 end)
    tide.gather(a)
    log[#log + 1] = "gather returns"
    ticker:await()
    assert.same({ "tick 1", "a runs", "tick 2", "tick 3", "gather returns", "tick 4", "tick 5" }, log)
  end)

  it("passes its cancel message on to the children, as asyncio's gather.cancel(msg)", function()
    local seen = {}
    local kids = {}
    for i = 1, 2 do
      kids[i] = tide.spawn(function()
        local _, e = pcall(tide.sleep, 10)
        seen[i] = e.message
        error(e, 0)
      end)
    end
    local g = tide.spawn(function() return tide.gather(kids) end)
    tide.sleep(0)
    g:cancel("stop")
    local ok, e = pcall(g.await, g)
    assert.is_false(ok)
    assert.equals("stop", e.message)
    tide.sleep(0)
    assert.same({ "stop", "stop" }, seen)
  end)

  it("takes tasks or functions, as arguments or one array, results in order", function()
    local r1 = tide.gather(function() tide.sleep(0.02); return 1 end, tide.spawn(function() return 2 end))
    assert.same({ 1, 2 }, r1)
    local r2 = tide.gather({ function() return "a", "ignored" end, function() return nil end, function() return "c" end })
    assert.equals("a", r2[1])
    assert.is_nil(r2[2])
    assert.equals("c", r2[3])
  end)

  it("propagates the first error at once while the others keep running", function()
    -- (slow is far slower than the bound, so a loaded machine does not fail it)
    local slow = tide.spawn(function() tide.sleep(0.5); return "slow" end)
    local t0 = tide.time()
    local ok, e = pcall(tide.gather, slow, function() tide.sleep(0.01); error("fast fail", 0) end)
    assert.is_false(ok)
    assert.equals("fast fail", e)
    assert.is_true(tide.time() - t0 < 0.3)
    assert.is_false(slow:done())
    assert.equals("slow", slow:await())
  end)

  it("return_exceptions puts errors in their slots, told apart by tide.iserror", function()
    local r = tide.gather({
      function() return "A ok" end,
      function() error("B failed!", 0) end,
      function() return "C ok" end,
      function() return "not an error: a string" end,
    }, { return_exceptions = true })
    assert.equals("A ok", r[1])
    assert.is_true(tide.iserror(r[2]))
    assert.equals("error", r[2].kind)
    assert.equals("B failed!", r[2].value)
    assert.equals("B failed!", r[2].message)
    assert.is_false(tide.iserror(r[4]))
    assert.is_false(tide.iserror(r[1]))
  end)

  it("return_exceptions wraps an error value whose __tostring fails, keeping the value", function()
    local v = setmetatable({}, { __tostring = function() error("tostring failed") end })
    local r = tide.gather({ function() error(v) end }, { return_exceptions = true })
    assert.is_true(tide.iserror(r[1]))
    assert.equals(v, r[1].value)
    assert.equals("(error object is a table value)", r[1].message)
  end)

  it("keeps a tide error from a task as it was", function()
    local r = tide.gather({ function() error(tide.error("custom", "mine")) end }, { return_exceptions = true })
    assert.equals("custom", r[1].kind)
  end)

  it("cancelling the gather cancels its children", function()
    local a = tide.spawn(tide.sleep, 10)
    local g = tide.spawn(tide.gather, a)
    tide.sleep(0.01)
    g:cancel()
    assert.equals("cancelled", errkind(g.await, g))
    assert.is_true(a:cancelled())
  end)

  -- asyncio: without return_exceptions the gather's future completes when
  -- the first child ends cancelled; with it, once every child has ended
  local function slow_cleaner(log)
    return tide.spawn(function()
      local _, e = pcall(tide.sleep, 10)
      tide.sleep(0.02) -- clean-up that suspends
      log.cleaned = true
      error(e, 0)
    end)
  end

  it("cancelled, ends when its first child ends cancelled; the others go on cleaning up", function()
    local log = {}
    local slow = slow_cleaner(log)
    local g = tide.spawn(tide.gather, slow, function() tide.sleep(10) end)
    tide.sleep(0.01)
    g:cancel()
    assert.equals("cancelled", errkind(g.await, g))
    assert.is_nil(log.cleaned, "the gather waited for the slow child's clean-up")
    assert.equals("cancelled", errkind(slow.await, slow))
    assert.is_true(log.cleaned)
  end)

  it("cancelled, with return_exceptions ends once its children have finished cancelling", function()
    local log = {}
    local slow = slow_cleaner(log)
    local g = tide.spawn(tide.gather, { slow, function() tide.sleep(10) end }, { return_exceptions = true })
    tide.sleep(0.01)
    g:cancel()
    assert.equals("cancelled", errkind(g.await, g))
    assert.is_true(log.cleaned, "the gather ended before its child had cleaned up")
  end)

  it("takes a task that already failed (its error propagates, or fills its slot)", function()
    local f = tide.spawn(function() error("early", 0) end)
    tide.sleep(0)
    assert.is_true(f:failed())
    local ok, e = pcall(tide.gather, f)
    assert.is_false(ok)
    assert.equals("early", e)
    local r = tide.gather({ f }, { return_exceptions = true })
    assert.equals("error", r[1].kind)
    assert.equals("early", r[1].value)
  end)

  it("cancelled: a child that fails while cancelling ends it with its error, as asyncio's; with return_exceptions the cancel", function()
    local function failing() pcall(tide.sleep, 1); error("cleanup failed", 0) end
    local g = tide.spawn(tide.gather, failing, function() tide.sleep(1) end)
    tide.sleep(0.01)
    g:cancel()
    local ok, e = pcall(g.await, g)
    assert.is_false(ok)
    assert.equals("cleanup failed", e)
    g = tide.spawn(tide.gather, { failing }, { return_exceptions = true })
    tide.sleep(0.01)
    g:cancel()
    ok, e = pcall(g.await, g)
    assert.equals("cancelled", e.kind)
    -- neither failure is reported as "nobody awaited" (run in a child to see its stderr)
    local r = require("tide.process").run({ S.tide_bin(), "-e", [[
      local tide = require "tide"
      local function failing() pcall(tide.sleep, 1); error("cleanup failed", 0) end
      for _, args in ipairs { { failing, function() tide.sleep(1) end }, { { failing }, { return_exceptions = true } } } do
        local g = tide.spawn(tide.gather, table.unpack(args))
        tide.sleep(0.01)
        g:cancel()
        pcall(g.await, g)
      end
      collectgarbage() collectgarbage()]] })
    assert.equals("", r.stderr)
  end)

  it("of nothing returns an empty list", function()
    assert.same({}, tide.gather())
  end)

  it("names the bad argument", function()
    local ok, e = pcall(tide.gather, function() end, 5)
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'gather' %(task or function expected, got number%)", e)
  end)

  it("points bad arguments at the caller's line; in an array, names the element", function()
    local ok, e = pcall(function() tide.gather(5) end)
    assert.is_false(ok)
    assert.matches("^spec/tide_spec.lua:%d+: bad argument #1 to 'gather'", e)
    ok, e = pcall(function() tide.gather({ function() end, 5 }) end)
    assert.matches("^spec/tide_spec.lua:%d+: bad argument #1 to 'gather' %(element 2: task or function", e)
    ok, e = pcall(function() tide.wait_for(function() end, "x") end)
    assert.matches("^spec/tide_spec.lua:%d+: bad argument #2 to 'wait_for'", e)
  end)

  it("locates a bad argument in a tail call at the caller, as Lua's own functions do", function()
    local function tail() return tide.wait_for(function() end, "x") end
    local line = debug.getinfo(1, "l").currentline + 1
    local ok, e = pcall(function() tail() end)
    assert.is_false(ok)
    assert.equals("spec/tide_spec.lua:" .. line .. ": bad argument #2 to 'wait_for' "
      .. "(number of seconds expected, got string)", e)
    ok, e = pcall(function() local _ = tide.gather({ n = 1.5 }) end)
    assert.matches("^spec/tide_spec.lua:%d+: bad argument #1 to 'gather' %(.*integer n", e)
  end)

  it("refuses an unknown option: a typo is an error, not a silent default", function()
    local function f() end
    local cases = {
      { "gather", 2, function() tide.gather({ f }, { return_exeptions = true }) end },
      { "wait", 2, function() tide.wait({ tide.spawn(f) }, { timout = 0.1 }) end },
      { "spawn", 1, function() tide.spawn({ nmae = "x" }, f) end },
      { "run", 1, function() tide.run({ clok = "virtual" }, f) end },
      { "spawn", 1, function() tide.task_group(function(g) g:spawn({ nam = "x" }, f) end) end },
    }
    for _, c in ipairs(cases) do
      local ok, e = pcall(c[3])
      assert.is_false(ok)
      assert.matches(("bad argument #%d to '[%%w.]*%s' %%(unknown option '[%%w_]+'%%)"):format(c[2], c[1]), e)
    end
    local ok, e = pcall(tide.wait, { tide.spawn(f) }, { timeout = 0 / 0 })
    assert.is_false(ok)
    assert.matches("opts.timeout is NaN", e)
    ok, e = pcall(function() for _ in tide.as_completed({ tide.spawn(f) }, 0 / 0) do end end)
    assert.matches("^spec/tide_spec.lua:%d+: bad argument #2 to 'as_completed' %(timeout is NaN%)", e)
    tide.sleep(0) -- the tasks made for the calls end
  end)
end)

describe("tide.wait", function()
  it("leaves nothing that wakes the task's next wait (a done callback already scheduled)", function()
    local x = tide.spawn(function() return 1 end)
    tide.wait({ x }, { timeout = 0 }) -- x ends in the same turn: its callback is on its way
    local y = tide.spawn(function() tide.sleep(0.05) return 2 end)
    local got = {}
    for t in tide.as_completed({ y }) do got[#got + 1] = t:result() end
    assert.same({ 2 }, got)
    local z = tide.spawn(function() return 3 end)
    tide.wait({ z }, { timeout = 0 })
    local w = tide.spawn(function() tide.sleep(0.05) return 4 end)
    local done, pending = tide.wait({ w })
    assert.equals(1, #done)
    assert.equals(0, #pending)
  end)

  it("counts a task given twice once, as asyncio's wait of a set", function()
    local t = tide.spawn(tide.sleep, 0.01)
    local done, pending = tide.wait({ t, t })
    assert.equals(1, #done)
    assert.equals(0, #pending)
    local u = tide.spawn(tide.sleep, 0.01)
    done, pending = tide.wait({ u, u }, { timeout = 0 })
    assert.equals(0, #done)
    assert.equals(1, #pending)
    u:await()
  end)

  local function sleeper(d, fail)
    return tide.spawn(function() tide.sleep(d); if fail then error("x", 0) end; return d end)
  end

  it("all_completed by default", function()
    local done, pending = tide.wait({ sleeper(0.01), sleeper(0.02) })
    assert.equals(2, #done)
    assert.equals(0, #pending)
  end)

  it("first_completed", function()
    local a, b = sleeper(0.01), sleeper(0.2)
    local done, pending = tide.wait({ a, b }, { return_when = "first_completed" })
    assert.same({ a }, done)
    assert.same({ b }, pending)
    b:cancel()
    pcall(b.await, b)
  end)

  it("first_error returns at the first failure", function()
    local a, b, c = sleeper(0.01), sleeper(0.02, true), sleeper(0.3)
    local done, pending = tide.wait({ a, b, c }, { return_when = "first_error" })
    assert.equals(2, #done)
    assert.same({ c }, pending)
    c:cancel()
    pcall(b.await, b)
    pcall(c.await, c)
  end)

  it("timeout returns what is done so far, without cancelling", function()
    local a, b = sleeper(0.01), sleeper(0.3)
    local done, pending = tide.wait({ a, b }, { timeout = 0.05 })
    assert.same({ a }, done)
    assert.same({ b }, pending)
    assert.is_false(b:done())
    b:cancel()
    pcall(b.await, b)
  end)

  it("with timeout 0 still lets ready tasks run: a polling loop ends", function()
    local ts = { tide.spawn(function() return 1 end) }
    local polls = 0
    repeat
      polls = polls + 1
      local _, pending = tide.wait(ts, { timeout = 0 })
    until #pending == 0 or polls > 1000
    assert.equals(1, polls)
  end)

  it("suspends even when nothing is left to wait for (a cancel is delivered)", function()
    local a = tide.spawn(function() return 1 end)
    tide.sleep(0)
    local after_wait = false
    local w = tide.spawn(function()
      tide.current_task():cancel()
      tide.wait({ a })
      after_wait = true
    end)
    assert.equals("cancelled", errkind(w.await, w))
    assert.is_false(after_wait)
  end)

  it("rejects a bad return_when and an empty set", function()
    assert.has_error(function() tide.wait({ sleeper(0) }, { return_when = "soon" }) end)
    assert.has_error(function() tide.wait({}) end)
    tide.sleep(0.001)
  end)
end)

describe("tide.as_completed", function()
  it("yields a task given twice once", function()
    local t = tide.spawn(tide.sleep, 0.01)
    local n = 0
    for _ in tide.as_completed({ t, t }) do n = n + 1 end
    assert.equals(1, n)
  end)

  it("called by hand, goes on after a call of it was cancelled", function()
    virtual(function()
      local ts = { tide.spawn(tide.sleep, 0.2), tide.spawn(tide.sleep, 0.4) }
      local nxt, got, ticks = tide.as_completed(ts), {}, 0
      for _ = 1, 10 do
        if #got == 2 then break end
        local ok, t = pcall(tide.timeout, 0.15, nxt) -- a heartbeat
        if ok then got[#got + 1] = t else ticks = ticks + 1 end
      end
      assert.same(ts, got)
      assert.is_true(ticks >= 2)
    end)
  end)

  it("left early (break, a cancel) leaves nothing on the tasks still running", function()
    local long = tide.spawn(tide.sleep, 100)
    local function mem() collectgarbage(); collectgarbage(); return collectgarbage("count") end
    local before = mem()
    for _ = 1, 1000 do
      local t = tide.spawn(function() for _ in tide.as_completed({ long }, 60) do end end)
      tide.sleep(0)
      t:cancel()
      pcall(t.await, t)
      for _ in tide.as_completed({ long, tide.spawn(function() end) }) do break end
    end
    local grown = mem() - before
    long:cancel()
    tide.sleep(0)
    assert.is_true(grown < 100, ("%.0f KB kept by 1,000 abandoned loops"):format(grown))
  end)

  it("yields tasks as they finish", function()
    local order = {}
    local ts = {}
    for i, d in ipairs { 0.03, 0.01, 0.02 } do
      ts[i] = tide.spawn(function() tide.sleep(d); return i end)
    end
    for t in tide.as_completed(ts) do order[#order + 1] = t:result() end
    assert.same({ 2, 3, 1 }, order)
  end)

  it("raises kind timeout when the deadline passes", function()
    local ts = { tide.spawn(tide.sleep, 0.01), tide.spawn(tide.sleep, 1) }
    local n = 0
    local kind = errkind(function()
      for _ in tide.as_completed(ts, 0.05) do n = n + 1 end
    end)
    assert.equals("timeout", kind)
    assert.equals(1, n)
    ts[2]:cancel()
    pcall(ts[2].await, ts[2])
  end)

  it("the deadline runs from the call: a task done after it is not yielded to a slow consumer", function()
    local ts = { tide.spawn(tide.sleep, 0.01), tide.spawn(tide.sleep, 0.06) }
    local n = 0
    local kind = errkind(function()
      for _ in tide.as_completed(ts, 0.03) do
        n = n + 1
        tide.sleep(0.1) -- busy past the deadline and past the second task's end
      end
    end)
    assert.equals("timeout", kind)
    assert.equals(1, n)
  end)
end)

describe("tide.task_group", function()
  it("cancels the children with the message of the group's own cancel, not a sibling's failure", function()
    local msg = tide.run({ clock = "virtual" }, function()
      local seen
      pcall(tide.timeout, 1, tide.task_group, function(g)
        g:spawn(function()
          local _, e = pcall(tide.sleep, 10)
          seen = e.message
          error(e, 0)
        end)
      end)
      return seen
    end)
    assert.equals("deadline of 1 s reached", msg)
    local failed
    pcall(tide.task_group, function(g)
      g:spawn(function() local _, e = pcall(tide.sleep, 10); failed = e.message; error(e, 0) end)
      g:spawn(function() tide.sleep(0.01); error("boom", 0) end)
    end)
    assert.equals("a sibling in the task group failed", failed)
  end)


  it("a child or the body raising nil is a failure: the group raises nil, not success", function()
    local sibling_ok
    local ok, e = pcall(tide.task_group, function(g)
      g:spawn(function() tide.sleep(0.01) error(nil) end)
      g:spawn(function() sibling_ok = pcall(tide.sleep, 0.1) end)
    end)
    assert.is_false(ok)
    assert.is_nil(e)
    assert.is_false(sibling_ok)
    ok, e = pcall(tide.task_group, function() error(nil) end)
    assert.is_false(ok)
    assert.is_nil(e)
  end)

  it("a child that already finished waiting in the same turn as a failing sibling finishes (asyncio's order)", function()
    local G
    local log = {}
    local ok, e = pcall(tide.task_group, function(g)
      G = g
      g:spawn(function() tide.sleep(0.05) error("a failed", 0) end)
      g:spawn(function() local ok = pcall(tide.sleep, 0.05); log[#log + 1] = ok and "b finished" or "b cancelled" end)
      g:spawn(function() tide.sleep(0.05) error("c failed", 0) end)
    end)
    assert.is_false(ok)
    assert.equals("a failed", e)
    assert.same({ "b finished" }, log)
    assert.equals(2, G.errors.n)
    assert.equals("c failed", G.errors[2])
  end)

  it("re-raises the first error when the body then fails while being cancelled", function()
    local G
    local ok, e = pcall(tide.task_group, function(g)
      G = g
      g:spawn(function() tide.sleep(0.01) error("child failed first", 0) end)
      pcall(tide.sleep, 1)
      error("body: cleanup failed", 0)
    end)
    assert.is_false(ok)
    assert.equals("child failed first", e)
    assert.same({ "child failed first", "body: cleanup failed", n = 2 }, G.errors)
  end)

  it("refuses a spawn while shutting down (the task would never run)", function()
    local kind
    pcall(tide.task_group, function(g)
      g:spawn(function() tide.sleep(0.01) error("boom", 0) end)
      g:spawn(function()
        pcall(tide.sleep, 1)
        local ok, e = pcall(g.spawn, g, function() end)
        kind = not ok and e.kind
      end)
    end)
    assert.equals("invalid_state", kind)
  end)
  it("g:spawn takes the options tide.spawn takes", function()
    local name
    tide.task_group(function(g)
      local t = g:spawn({ name = "worker" }, function(x) return x end, 1)
      name = t.name
    end)
    assert.equals("worker", name)
  end)

  it("returns when all children are done", function()
    local done = {}
    local r = tide.task_group(function(g)
      g:spawn(function() tide.sleep(0.02); done[#done + 1] = "a" end)
      g:spawn(function() tide.sleep(0.01); done[#done + 1] = "b" end)
      return "body"
    end)
    assert.equals("body", r)
    assert.same({ "b", "a" }, done)
  end)

  it("the first error cancels the siblings and is re-raised as raised", function()
    local sibling
    local ok, e = pcall(tide.task_group, function(g)
      sibling = g:spawn(tide.sleep, 10)
      g:spawn(function() tide.sleep(0.01); error("child failed", 0) end)
      tide.sleep(10) -- the body is cancelled too
    end)
    assert.is_false(ok)
    assert.equals("child failed", e)
    assert.is_true(sibling:cancelled())
  end)

  it("keeps the errors of other children on the group", function()
    local group
    local ok, e = pcall(tide.task_group, function(g)
      group = g
      g:spawn(function() tide.sleep(0.01); error("first", 0) end)
      g:spawn(function()
        local okk = pcall(tide.sleep, 1) -- cancelled ...
        error("second", 0) -- ... and fails while cleaning up
      end)
    end)
    assert.is_false(ok)
    assert.equals("first", e)
    assert.same({ "first", "second", n = 2 }, group.errors)
  end)

  it("an error in the body cancels the children", function()
    local child
    local ok, e = pcall(tide.task_group, function(g)
      child = g:spawn(tide.sleep, 10)
      error("body failed", 0)
    end)
    assert.is_false(ok)
    assert.equals("body failed", e)
    assert.is_true(child:cancelled())
  end)
end)

describe("tide.wait_for", function()
  it("runs a function in the calling task, at once, as asyncio 3.12's wait_for of a coroutine", function()
    local me, inside = tide.current_task(), nil
    local n = #tide.all_tasks()
    local r = tide.wait_for(function(a) inside = tide.current_task(); return a, #tide.all_tasks() end, 1, "x")
    assert.equals(me, inside)
    assert.equals("x", r)
    local ok, e = pcall(tide.wait_for, function() tide.sleep(1) end, 0.01)
    assert.is_false(ok)
    assert.equals("timeout", e.kind)
    assert.equals(n, #tide.all_tasks())
  end)

  it("raises the caller's cancel that comes after the inner work ended, even past the deadline", function()
    local caller
    local t = tide.spawn(function()
      pcall(tide.sleep, 1) -- the deadline's cancel, swallowed
      tide.call_soon(function() caller:cancel("outer") end)
      return "v"
    end)
    caller = tide.spawn(function() return tide.wait_for(t, 0.05) end)
    local ok, e = pcall(caller.await, caller)
    assert.is_false(ok)
    assert.equals("cancelled", e.kind)
    assert.equals("outer", e.message)
  end)

  it("refuses a task of another tide.run loop, leaving it alone", function()
    local outer = tide.spawn(function() tide.sleep(0.05); return 1 end)
    local ok, e = pcall(tide.run, function() return tide.wait_for(outer, 0.01) end)
    assert.is_false(ok)
    assert.equals("invalid_state", e.kind)
    assert.equals(1, outer:await())
  end)

  it("resumes the loop turn after the task ends, as awaiting it does (asyncio awaits the task itself)", function()
    local log = {}
    local ticker = tide.spawn(function()
      for i = 1, 4 do log[#log + 1] = "tick " .. i; tide.sleep(0) end
    end)
    local a = tide.spawn(function() log[#log + 1] = "a runs"; return 1 end)
    tide.wait_for(a, 10)
    log[#log + 1] = "wait_for returns"
    ticker:await()
    assert.same({ "tick 1", "a runs", "tick 2", "wait_for returns", "tick 3", "tick 4" }, log)
  end)

  it("times out when the inner task ended but the caller had not resumed when the time ran out (asyncio)", function()
    local t = tide.spawn(function() tide.sleep(0); return "ok" end)
    tide.spawn(function() local c = os.clock(); while os.clock() - c < 0.05 do end end) -- the loop blocked past the deadline
    local ok, e = pcall(tide.wait_for, t, 0.01)
    assert.is_false(ok)
    assert.equals("timeout", e.kind)
    assert.equals("ok", t:await())
  end)

  it("cancels the inner work when the time is up, not when the caller next runs (asyncio's timeout)", function()
    -- the inner work's sleep and the deadline end at the same virtual
    -- instant: the inner work would finish before the caller ran again
    local ok, e, inner
    tide.run({ clock = "virtual" }, function()
      inner = tide.spawn(function() tide.sleep(1); return "inner result" end)
      tide.sleep(0)
      ok, e = pcall(tide.wait_for, inner, 1)
    end)
    assert.is_false(ok)
    assert.equals("timeout", e.kind)
    assert.is_true(inner:cancelled())
  end)

  it("leaves nothing that wakes the task's next wait_for when the work ends with the deadline", function()
    local ok, v, at = tide.run({ clock = "virtual" }, function()
      local t = tide.spawn(function() tide.sleep(1) return "inner" end)
      tide.sleep(0)
      pcall(tide.wait_for, t, 1) -- timer and done callback in one turn: either way
      local t0, q = tide.time(), tide.Queue()
      tide.spawn(function() tide.sleep(5) q:put("late") end)
      local ok, v = pcall(tide.wait_for, function() return q:get() end, 10)
      return ok, v, tide.time() - t0
    end)
    assert.is_true(ok, tostring(v))
    assert.equals("late", v)
    assert.is_true(math.abs(at - 5) < 1e-6)
  end)

  it("returns the results in time", function()
    local a, b = tide.wait_for(function(x) tide.sleep(0.01); return x, 2 end, 1, "one")
    assert.equals("one", a)
    assert.equals(2, b)
  end)

  it("on expiry cancels the inner work, waits for its cleanup, raises kind timeout", function()
    local cleaned = false
    local t = tide.spawn(function()
      local ok, e = pcall(tide.sleep, 5)
      tide.sleep(0.02)
      cleaned = true
      error(e, 0)
    end)
    local t0 = tide.time()
    local kind, e = errkind(tide.wait_for, t, 0.05)
    assert.equals("timeout", kind)
    assert.matches("timed out after 0.05 s", tostring(e))
    assert.is_true(cleaned)
    assert.is_true(t:cancelled())
    assert.is_true(tide.time() - t0 >= 0.07)
  end)

  it("on expiry, inner work that catches the cancel and returns gives its results (asyncio 3.12)", function()
    local r = tide.wait_for(function()
      pcall(tide.sleep, 10)
      return "swallowed"
    end, 0.01)
    assert.equals("swallowed", r)
  end)

  it("cancelled itself, gives what the inner work ends with: its results if it caught the cancel (asyncio 3.12)", function()
    local function waiter(fn) -- the caller of wait_for is cancelled at 10 ms
      local w = tide.spawn(tide.wait_for, fn, 5)
      tide.sleep(0.01)
      w:cancel()
      return pcall(w.await, w)
    end
    assert.same({ true, "swallowed" }, { waiter(function() pcall(tide.sleep, 10); return "swallowed" end) })
    local ok, e = waiter(function() tide.sleep(10) end)
    assert.is_false(ok)
    assert.equals("cancelled", e.kind)
    assert.same({ false, "other" }, { waiter(function() pcall(tide.sleep, 10); error("other", 0) end) })
    -- a second cancel of the caller, or one after the expiry, reaches the inner work too
    local w = tide.spawn(tide.wait_for, function() pcall(tide.sleep, 10); tide.sleep(0.05); return "late" end, 5)
    tide.sleep(0.01); w:cancel("one"); tide.sleep(0.01); w:cancel("two")
    ok, e = pcall(w.await, w)
    assert.is_false(ok) -- (it gave "late": the second cancel was lost)
    assert.equals("cancelled: two", tostring(e))
    w = tide.spawn(tide.wait_for, function() pcall(tide.sleep, 10); tide.sleep(0.05); return "late" end, 0.01)
    tide.sleep(0.03); w:cancel("x")
    ok, e = pcall(w.await, w)
    assert.is_false(ok)
    assert.equals("cancelled: x", tostring(e))
    -- a second cancel that comes once the inner work is done is the caller's own
    local inner = tide.spawn(function() pcall(tide.sleep, 0.2); return "late" end)
    inner:add_done_callback(function() w:cancel("late-cancel") end) -- before wait_for wakes
    w = tide.spawn(tide.wait_for, inner, 5)
    tide.sleep(0.01); w:cancel("c1")
    ok, e = pcall(w.await, w)
    assert.is_false(ok) -- (it gave "late")
    assert.equals("cancelled: late-cancel", tostring(e))
  end)

  it("on expiry, inner work that fails while cancelling raises that error, not timeout", function()
    local ok, e = pcall(tide.wait_for, function()
      pcall(tide.sleep, 10)
      error("cleanup blew up", 0)
    end, 0.01)
    assert.is_false(ok)
    assert.equals("cleanup blew up", e)
  end)

  it("re-raises the inner error", function()
    local ok, e = pcall(tide.wait_for, function() error("inner", 0) end, 1)
    assert.is_false(ok)
    assert.equals("inner", e)
  end)

  it("cancelling the waiter cancels the inner task", function()
    local inner = tide.spawn(tide.sleep, 10)
    local w = tide.spawn(tide.wait_for, inner, 5)
    tide.sleep(0.01)
    w:cancel()
    assert.equals("cancelled", errkind(w.await, w))
    assert.is_true(inner:cancelled())
  end)

  it("with 0 s or less cancels the inner work before it starts, as asyncio's", function()
    local started = false
    assert.equals("timeout", errkind(tide.wait_for, function() started = true end, 0))
    assert.is_false(started)
    local t = tide.spawn(function() return "quick" end)
    assert.equals("timeout", errkind(tide.wait_for, t, -1))
    assert.is_true(t:cancelled())
    local done = tide.spawn(function() return "done" end)
    tide.sleep(0)
    assert.equals("done", tide.wait_for(done, 0)) -- already done: its result
  end)

  it("checks its arguments", function()
    local ok, e = pcall(tide.wait_for, 1, 2)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'wait_for' %(task or function expected, got number%)", e)
  end)
end)

describe("tide.timeout", function()
  it("with 0 s or less cancels at the body's first suspension, even a sleep(0) (asyncio's call_soon)", function()
    for _, seconds in ipairs { 0, -1 } do
      local ok, e = pcall(tide.timeout, seconds, function() tide.sleep(0); return "body done" end)
      assert.is_false(ok)
      assert.equals("timeout", e.kind)
    end
    assert.equals("no suspension", tide.timeout(0, function() return "no suspension" end))
  end)

  it("with nil seconds sets no deadline, as asyncio.timeout(None)", function()
    assert.same({ "ran", 2 }, { tide.timeout(nil, function(a) tide.sleep(0.01); return "ran", a end, 2) })
  end)

  it("a cancel from outside arriving as the deadline fires is not turned into a timeout", function()
    local ok, kind, msg, cancelled = tide.run({ clock = "virtual" }, function()
      local t = tide.spawn(function()
        local ok, e = pcall(tide.timeout, 1, tide.sleep, 10)
        if not ok and e.kind ~= "timeout" then error(e, 0) end
        tide.sleep(5)
        return "carried on"
      end)
      tide.sleep(0)
      tide.call_later(1, function() t:cancel("shutdown") end) -- the same instant
      local ok, e = pcall(t.await, t)
      return ok, e and e.kind, e and e.message, t:cancelled()
    end)
    assert.is_false(ok)
    assert.equals("cancelled", kind)
    assert.equals("shutdown", msg)
    assert.is_true(cancelled)
  end)

  it("a cancel asked during the scope that the task swallowed ends it cancelled, not timed out (asyncio)", function()
    local t = tide.spawn(function()
      return tide.timeout(0.05, function() pcall(tide.sleep, 10); tide.sleep(0.2) end)
    end)
    tide.sleep(0.01)
    t:cancel()
    local ok, e = pcall(t.await, t)
    assert.is_false(ok)
    assert.equals("cancelled", e.kind) -- (it was "timeout": asyncio 3.11-3.13 raise CancelledError)
    -- an inner scope's own expiry is taken back: the outer still times out
    ok, e = pcall(tide.timeout, 0.1, function()
      assert.equals("timeout", select(2, pcall(tide.timeout, 0.01, tide.sleep, 1)).kind)
      tide.sleep(1)
    end)
    assert.is_false(ok)
    assert.equals("timeout", e.kind)
  end)

  it("an old cancel the task already swallowed does not spoil a later timeout", function()
    local t = tide.spawn(function()
      tide.current_task():cancel("first")
      tide.current_task():cancel("second") -- asked while the first is on its way
      pcall(tide.sleep, 1) -- swallows "first"
      return (select(2, pcall(tide.timeout, 0.01, tide.sleep, 10))).kind
    end)
    assert.equals("timeout", t:await())
  end)

  it("returns fn's results in time", function()
    assert.equals(3, tide.timeout(1, function(a, b) tide.sleep(0.01); return a + b end, 1, 2))
  end)

  it("raises kind timeout at the deadline, and the task goes on", function()
    local kind = errkind(tide.timeout, 0.02, tide.sleep, 10)
    assert.equals("timeout", kind)
    tide.sleep(0.001) -- not cancelled any more
  end)

  it("nested scopes report the right one", function()
    virtual(function()
      -- inner expires first: the inner scope raises, the outer sees a timeout error
      local ok, e = pcall(tide.timeout, 10, function()
        local ok2, e2 = pcall(tide.timeout, 1, tide.sleep, 5)
        assert.is_false(ok2)
        assert.equals("timeout", e2.kind)
        assert.matches("after 1 s", e2.message)
        return "outer fine"
      end)
      assert.is_true(ok)
      assert.equals("outer fine", e)
      -- outer expires first: passes through the inner scope untouched
      local inner_saw
      local ok3, e3 = pcall(tide.timeout, 1, function()
        local ok4, e4 = pcall(tide.timeout, 10, tide.sleep, 5)
        inner_saw = e4.kind
        error(e4, 0)
      end)
      assert.is_false(ok3)
      assert.equals("cancelled", inner_saw)
      assert.equals("timeout", e3.kind)
      assert.matches("after 1 s", e3.message)
    end)
  end)
end)

describe("tide.shield", function()
  it("cancelling the caller does not cancel the shielded task", function()
    local inner = tide.spawn(function() tide.sleep(0.03); return "kept" end)
    local w = tide.spawn(tide.shield, inner)
    tide.sleep(0.01)
    w:cancel()
    assert.equals("cancelled", errkind(w.await, w))
    assert.equals("kept", inner:await())
  end)

  it("returns the results when not cancelled", function()
    assert.equals(5, tide.shield(function() tide.sleep(0.001); return 5 end))
  end)
end)

describe("errors", function()
  it("tide.error makes values tide.iserror recognises, with kind, message, tostring", function()
    local e = tide.error("custom", "something broke", { code = 7 })
    assert.is_true(tide.iserror(e))
    assert.equals("custom", e.kind)
    assert.equals("something broke", e.message)
    assert.equals(7, e.code)
    assert.equals("custom: something broke", tostring(e))
    assert.is_false(tide.iserror("custom: something broke"))
    assert.is_false(tide.iserror({ kind = "x", message = "y" }))
  end)
end)

describe("user coroutines", function()
  it("a tide call inside coroutine.wrap suspends the whole task", function()
    local gen = coroutine.wrap(function()
      for i = 1, 3 do
        tide.sleep(0.001)
        coroutine.yield(i)
      end
    end)
    local other_ran = false
    local t = tide.spawn(function() other_ran = true end)
    assert.same({ 1, 2, 3 }, { gen(), gen(), gen() })
    assert.is_true(other_ran)
    t:await()
  end)

  it("coroutine.resume passes tide suspensions through and keeps plain yields", function()
    local co = coroutine.create(function(a)
      local b = coroutine.yield(a + 1)
      tide.sleep(0.001)
      return b * 2
    end)
    assert.same({ true, 2 }, { coroutine.resume(co, 1) })
    assert.same({ true, 10 }, { coroutine.resume(co, 5) })
    assert.equals("dead", coroutine.status(co))
  end)

  it("coroutine.resume returns exactly what the coroutine gave, as plain Lua", function()
    assert.equals(1, select("#", coroutine.resume(coroutine.create(function() end))))
    assert.equals(3, select("#", coroutine.resume(coroutine.create(function() return nil, nil end))))
    assert.equals(0, select("#", coroutine.wrap(function() tide.sleep(0) end)()))
  end)

  it("a bare coroutine.yield in a task is sleep(0): other tasks run, and a cancel is delivered there", function()
    local ran = false
    tide.spawn(function() ran = true end)
    local t = tide.spawn(function()
      while true do coroutine.yield() end
    end)
    tide.sleep(0)
    tide.sleep(0)
    assert.is_true(ran)
    assert.is_true(t:cancel())
    assert.equals("cancelled", errkind(t.await, t))
  end)

  it("errors inside coroutine.wrap carry the position like plain Lua", function()
    local f = coroutine.wrap(function() error("in gen") end)
    local ok, e = pcall(f)
    assert.is_false(ok)
    assert.matches("tide_spec.lua:%d+: in gen", e)
  end)

  it("coroutine.wrap closes a failed coroutine's <close> variables and raises what the last of them raised (Lua's own test)", function()
    local function closing(f) return setmetatable({}, { __close = f }) end
    local seen
    local co = coroutine.wrap(function()
      local a <close> = closing(function(_, e) seen = e; error("@YYY", 0) end)
      local b <close> = closing(function() error("@XXX", 0) end)
      coroutine.yield(100)
      error(200)
    end)
    assert.equals(100, co())
    local ok, e = pcall(co)
    assert.is_false(ok)
    assert.equals("@XXX", seen)
    assert.equals("@YYY", e)
  end)

  it("coroutine.resume and coroutine.wrap are C functions with lua5.4's argument errors", function()
    assert.equals("C", debug.getinfo(coroutine.resume, "S").what)
    assert.equals("C", debug.getinfo(coroutine.wrap(print), "S").what)
    assert.same({ false, "bad argument #1 to 'coroutine.resume' (thread expected, got number)" },
      { pcall(coroutine.resume, 1) })
    assert.same({ false, "bad argument #1 to 'coroutine.wrap' (function expected, got no value)" },
      { pcall(coroutine.wrap) })
    assert.same({ false, "bad argument #1 to 'coroutine.isyieldable' (thread expected, got number)" },
      { pcall(coroutine.isyieldable, 1) })
  end)

  it("a coroutine.wrap error called in tail position still names the caller's line", function()
    local g = coroutine.wrap(function() error("deep") end)
    local function h() return g() end
    local ok, e = pcall(h)
    assert.is_false(ok)
    assert.matches("^[^:]*tide_spec.lua:%d+: [^:]*tide_spec.lua:%d+: deep$", e)
  end)

  it("a generator suspending under a C function fails there, and the task carries on", function()
    local g = coroutine.wrap(function() tide.sleep(0.001); return "slept" end)
    local ok, e = pcall(string.gsub, "a", "a", function() g() end)
    assert.is_false(ok)
    assert.matches("cannot suspend the task here", e)
    assert.is_nil(tide.sleep(0.001)) -- the task still suspends
    local h = coroutine.wrap(function() return tide.sleep(0.001, "fine") end)
    assert.equals("fine", h())
  end)

  it("another task cannot resume a coroutine waiting inside a tide call", function()
    local co = coroutine.create(function() return tide.sleep(0.05, "slept") end)
    local a = tide.spawn(function() return coroutine.resume(co) end)
    tide.sleep(0.01)
    assert.same({ false, "cannot resume non-suspended coroutine" }, { coroutine.resume(co, "intruder") })
    assert.same({ true, "slept" }, { a:await() })
  end)

  it("a coroutine waiting inside a tide call is normal: coroutine.close refuses it, as Lua's for a normal one", function()
    local co = coroutine.create(function() return tide.sleep(0.05, "slept") end)
    local a = tide.spawn(function() return coroutine.resume(co) end)
    tide.sleep(0.01)
    assert.equals("normal", coroutine.status(co))
    assert.same({ false, "cannot close a normal coroutine" }, { pcall(coroutine.close, co) })
    assert.same({ true, "slept" }, { a:await() })
    assert.equals("dead", coroutine.status(co))
    assert.same({ true }, { coroutine.close(co) })
  end)

  it("another task cannot resume or close a waiting task's own coroutine", function()
    local own
    local t = tide.spawn(function()
      own = coroutine.running()
      return tide.sleep(0.05, "woke")
    end)
    tide.sleep(0.01)
    assert.equals("normal", coroutine.status(own))
    assert.same({ false, "cannot resume non-suspended coroutine" }, { coroutine.resume(own, "x") })
    assert.is_false((pcall(coroutine.close, own)))
    assert.equals("woke", t:await())
  end)

  it("tide.run inside a coroutine resumed where nothing can yield runs its own loop", function()
    local ok, v = pcall(string.gsub, "a", "a", function()
      return coroutine.wrap(function()
        return tide.run(function() tide.sleep(0.001) return "inner" end)
      end)()
    end)
    assert.is_true(ok)
    assert.equals("inner", v)
  end)
end)

describe("require", function()
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  local function module(name, src)
    local f = assert(io.open(dir .. "/" .. name .. ".lua", "w"))
    f:write(src)
    f:close()
  end
  local path = package.path
  before_each(function() package.path = dir .. "/?.lua;" .. path end)
  after_each(function() package.path = path end)
  teardown(function() os.execute("rm -rf " .. dir) end)

  it("a suspending module that requires itself, or a cycle of them across tasks, fails at once", function()
    module("spec_selfreq", "local tide = require 'tide'; tide.sleep(0); require 'spec_selfreq'; return {}")
    local t0 = tide.time()
    local ok, e = pcall(require, "spec_selfreq")
    assert.is_false(ok)
    assert.matches("loop or previous error loading module 'spec_selfreq'", e)
    module("spec_cyc_a", "local tide = require 'tide'; tide.sleep(0.01); require 'spec_cyc_b'; return {}")
    module("spec_cyc_b", "local tide = require 'tide'; tide.sleep(0.01); require 'spec_cyc_a'; return {}")
    local r = tide.wait_for(tide.gather, 5, { function() return require "spec_cyc_a" end,
      function() return require "spec_cyc_b" end }, { return_exceptions = true })
    for i = 1, 2 do assert.matches("loop or previous error loading module", tostring(r[i])) end
    assert.is_true(tide.time() - t0 < 2, "reloaded the modules again and again")
    for _, m in ipairs({ "spec_selfreq", "spec_cyc_a", "spec_cyc_b" }) do package.loaded[m] = nil end
  end)

  it("a module's top level may suspend its task, and others run meanwhile", function()
    module("spec_sleepy", "local tide = require 'tide'; tide.sleep(0.02); return { ok = true }")
    local ran = false
    local other = tide.spawn(function() ran = true end)
    local m, where = require("spec_sleepy")
    assert.is_true(m.ok)
    assert.is_true(ran)
    assert.matches("spec_sleepy.lua$", where)
    assert.equals(m, require("spec_sleepy")) -- loaded once
    other:await()
    package.loaded.spec_sleepy = nil
  end)

  it("behaves as Lua's: true for a module returning nothing, messages, errors at the caller", function()
    module("spec_nothing", "return nil")
    assert.is_true(require("spec_nothing"))
    assert.is_true(package.loaded.spec_nothing)
    package.loaded.spec_nothing = nil
    local ok, err = pcall(require, "spec_no_such_module")
    assert.is_false(ok)
    assert.matches("^module 'spec_no_such_module' not found:\n\tno field package.preload%['spec_no_such_module'%]\n\tno file", err)
    local line = debug.getinfo(1, "l").currentline + 1
    ok, err = pcall(function() require("spec_no_such_module") end)
    assert.matches("^spec/tide_spec.lua:" .. line .. ": module", err)
    assert.equals("bad argument #1 to 'require' (string expected, got no value)", select(2, pcall(require)))
    module("spec_raises", "error('while loading')")
    ok, err = pcall(require, "spec_raises")
    assert.matches("spec_raises.lua:1: while loading", err)
    assert.is_nil(package.loaded.spec_raises)
    assert.equals("C", debug.getinfo(require, "S").what)
  end)

  it("two tasks requiring a module while it loads get one copy: the second waits, as Python's import lock", function()
    module("spec_once", "SPEC_ONCE = (SPEC_ONCE or 0) + 1; require('tide').sleep(0.03); return {}")
    local a, b = tide.spawn(require, "spec_once"), tide.spawn(require, "spec_once")
    assert.equals(a:await(), b:await())
    assert.equals(1, SPEC_ONCE)
    package.loaded.spec_once, SPEC_ONCE = nil, nil
    -- a loader that fails: the waiter tries itself, and fails the same way
    module("spec_fails", "require('tide').sleep(0.02); error('broken')")
    local x, y = tide.spawn(pcall, require, "spec_fails"), tide.spawn(pcall, require, "spec_fails")
    assert.matches("broken", select(2, x:await()))
    assert.matches("broken", select(2, y:await()))
  end)

  it("two tasks loading modules that require each other do not wait for each other forever", function()
    module("spec_ma", "require('tide').sleep(0.02); require('spec_mb'); return { 'a' }")
    module("spec_mb", "require('tide').sleep(0.02); if not SPEC_DEEP then SPEC_DEEP = true; "
      .. "require('spec_ma') end; return { 'b' }")
    local x = tide.spawn(require, "spec_ma")
    local y = tide.spawn(require, "spec_mb")
    local done = tide.wait({ x, y }, { timeout = 2 })
    assert.equals(2, #done)
    package.loaded.spec_ma, package.loaded.spec_mb, SPEC_DEEP = nil, nil, nil
  end)

  it("a load abandoned in a user coroutine, or in an outer run, leaves no one waiting", function()
    module("spec_dropped", "require('tide').sleep(0.01); error('boom')")
    assert.is_false(coroutine.resume(coroutine.create(function() return require "spec_dropped" end)))
    module("spec_dropped", "return 'fine'") -- loading it again works, at once
    local t = tide.spawn(require, "spec_dropped")
    assert.equals("fine", tide.wait_for(function() return t:await() end, 1))
    package.loaded.spec_dropped = nil
    -- a nested run requiring a module an outer task is loading loads its own
    module("spec_outer", "require('tide').sleep(0.05); return {}")
    local outer = tide.spawn(require, "spec_outer")
    tide.sleep(0.01)
    assert.is_table(tide.run(function() return require "spec_outer" end))
    outer:await()
    package.loaded.spec_outer = nil
  end)

  it("cancelling a task while its module loads leaves the module unloaded", function()
    module("spec_slow", "require('tide').sleep(10); return 1")
    local t = tide.spawn(require, "spec_slow")
    tide.sleep(0.01)
    t:cancel()
    assert.is_true(select(2, pcall(t.await, t)).kind == "cancelled")
    assert.is_nil(package.loaded.spec_slow)
  end)
end)

describe("cancellation at every suspension point", function()
  local function cancel_while(block)
    local t = tide.spawn(block)
    tide.sleep(0.005)
    assert.is_false(t:done())
    t:cancel()
    local ok, e = pcall(t.await, t)
    assert.is_false(ok)
    assert.equals("cancelled", e.kind)
  end

  it("sleep", function() cancel_while(function() tide.sleep(10) end) end)
  it("await", function()
    local other = tide.spawn(tide.sleep, 10)
    cancel_while(function() other:await() end)
    other:cancel()
    pcall(other.await, other)
  end)
  it("gather", function() cancel_while(function() tide.gather(function() tide.sleep(10) end) end) end)
  it("queue get", function() local q = tide.Queue(); cancel_while(function() q:get() end) end)
  it("queue put", function() local q = tide.Queue(1); q:put(1); cancel_while(function() q:put(2) end) end)
  it("semaphore", function() local s = tide.Semaphore(0); cancel_while(function() s:acquire() end) end)
  it("event", function() local ev = tide.Event(); cancel_while(function() ev:wait() end) end)
  it("timeout scope", function() cancel_while(function() tide.timeout(10, tide.sleep, 20) end) end)
  it("user coroutine", function()
    cancel_while(function() coroutine.wrap(function() tide.sleep(10) end)() end)
  end)
end)

describe("a cancel storm", function()
  it("cancels 100k tasks blocked on sleep, queue and semaphore, and memory comes back", function()
    collectgarbage(); collectgarbage()
    local before = collectgarbage("count")
    local q, sem = tide.Queue(), tide.Semaphore(0)
    local ts = {}
    for i = 1, 100000 do
      local k = i % 3
      ts[i] = tide.spawn(k == 0 and tide.sleep or k == 1 and function() q:get() end
        or function() sem:acquire() end, 100)
    end
    tide.sleep(0)
    for i = 1, #ts do ts[i]:cancel() end
    tide.sleep(0)
    for i = 1, #ts do assert(ts[i]:cancelled()) end
    -- no cancelled getter or acquirer is left to take what comes next
    q:put_nowait("kept")
    assert.equals("kept", q:get_nowait())
    sem:release()
    assert.is_false(sem:locked())
    ts, q, sem = nil, nil, nil
    collectgarbage(); collectgarbage()
    local after = collectgarbage("count")
    assert.is_true(after - before < 512, ("%.0f KB left"):format(after - before))
  end)
end)

describe("robustness (each of these once corrupted memory)", function()
  local core = require "tide.core"

  it("metamethods called with the wrong object raise instead of crashing", function()
    local q, t = tide.Queue(), tide.spawn(function() end)
    assert.is_false((pcall(getmetatable(q).__index, {}, "maxsize")))
    assert.is_false((pcall(getmetatable(t).__index, {}, "id")))
    assert.is_false((pcall(core.gather_wait, { {} }, 1)))
    t:await()
  end)

  it("core.wake does not wake a task parked inside a queue", function()
    local q = tide.Queue()
    local a = tide.spawn(function() return q:get() end)
    tide.sleep(0)
    assert.is_false(core.wake(a))
    q:put_nowait("item")
    assert.equals("item", a:await())
  end)

  it("a task that cancels itself and then sleeps leaves no timer behind", function()
    local t = tide.spawn(function() tide.current_task():cancel(); tide.sleep(0.05) end)
    assert.equals("cancelled", (errkind(t.await, t)))
    t = nil
    collectgarbage(); collectgarbage()
    tide.sleep(0.08) -- the dead task's deadline passes harmlessly
  end)

  it("a task's coroutine cannot be closed from outside; its queue stays usable", function()
    local q, co = tide.Queue(), nil
    local a = tide.spawn(function() co = coroutine.running(); q:get() end)
    tide.sleep(0)
    assert.same({ false, "cannot close a normal coroutine" }, { pcall(coroutine.close, co) })
    a:cancel()
    tide.sleep(0)
    assert.is_true(a:done())
    assert.is_not_nil(a:error())
    a = nil
    collectgarbage(); collectgarbage()
    q:put_nowait(1)
    assert.equals(1, q:get_nowait())
  end)

  it("a task left waiting when its nested run ends is abandoned, not dangling", function()
    local q, left = tide.Queue(), nil
    tide.run(function()
      left = tide.spawn(function()
        while true do pcall(q.get, q) end -- swallows the run's cancellation
      end)
      tide.sleep(0.01)
    end)
    assert.is_true(left:cancelled())
    collectgarbage(); collectgarbage()
    q:put_nowait(1)
    assert.equals(1, q:get_nowait())
  end)

  it("an error object whose __tostring raises is still reported and contained", function()
    local e = setmetatable({}, { __tostring = function() error("boom") end })
    local ok, r = pcall(tide.run, function()
      local t = tide.spawn(function() error(e) end)
      pcall(t.await, t)
      return "inner done"
    end)
    assert.is_true(ok)
    assert.equals("inner done", r)
    assert.is_not_nil(tide.current_task())
  end)

  it("waking with many values grows the task's stack", function()
    local t = tide.spawn(function() return select("#", select(2, core.park())) end)
    tide.sleep(0)
    local vals = {}
    for i = 1, 5000 do vals[i] = i end
    assert.is_true(core.wake(t, table.unpack(vals)))
    assert.equals(5000, t:await())
  end)
end)
