-- Specs for tide.to_thread: functions run on libuv's thread pool in worker
-- Lua states while the calling task is suspended. Run inside the tide host.
local tide = require "tide"
local thread = require "tide.thread"
local fs_read = require("tide.fs").read_file

-- The error a call raises (fails if it returns).
local function raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error, got success")
  return err
end

-- Blocks the worker thread (not the loop) for s seconds.
local function block(s)
  os.execute("sleep " .. s)
  return s
end

describe("tide.to_thread", function()
  describe("values", function()
    it("returns the results, copying nil, booleans, integers, floats and strings", function()
      local n, a, b, c, d, e, f = (function(...) return select("#", ...), ... end)(
        tide.to_thread(function(...) return ... end, nil, true, 3, 2.5, "a\0b", false))
      assert.equals(6, n)
      assert.is_nil(a)
      assert.is_true(b)
      assert.equals("integer", math.type(c))
      assert.equals(3, c)
      assert.equals("float", math.type(d))
      assert.equals(2.5, d)
      assert.equals("a\0b", e)
      assert.is_false(f)
    end)

    it("copies nested tables, keeping shared subtables and cycles", function()
      local t = { 1, 2, { x = "y" }, k = {}, [2.5] = "f", [true] = "b" }
      t.self, t.again = t, t.k
      local r = tide.to_thread(function(v)
        assert(v.self == v and v.again == v.k, "identity lost on the way in")
        v.added = #v
        return v
      end, t)
      assert.are_not.equal(t, r)
      assert.equals(r, r.self)
      assert.equals(r.k, r.again)
      assert.equals("y", r[3].x)
      assert.equals("f", r[2.5])
      assert.equals("b", r[true])
      assert.equals(3, r.added)
      assert.is_nil(t.added) -- a copy, not the caller's table
    end)

    it("runs in a separate state that has the standard libraries", function()
      _G.THREAD_SPEC_GLOBAL = 1
      local g, s, i, o = tide.to_thread(function()
        return THREAD_SPEC_GLOBAL, type(string.rep), type(io.open), type(os.execute)
      end)
      _G.THREAD_SPEC_GLOBAL = nil
      assert.is_nil(g)
      assert.same({ "function", "function", "function" }, { s, i, o })
    end)

    it("can require modules found on the caller's package.path", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. dir))
      local f = assert(io.open(dir .. "/thread_spec_mod.lua", "w"))
      f:write("return { answer = 42 }\n")
      f:close()
      local saved = package.path
      package.path = dir .. "/?.lua;" .. saved
      local ok, r = pcall(tide.to_thread, function()
        return require("thread_spec_mod").answer
      end)
      package.path = saved
      os.remove(dir .. "/thread_spec_mod.lua")
      os.remove(dir)
      assert(ok, tostring(r))
      assert.equals(42, r)
    end)

    it("allows globals (_ENV) and a local function calling itself", function()
      local function fib(n)
        if n < 2 then return n end
        return fib(n - 1) + fib(n - 2)
      end
      assert.equals(6765, tide.to_thread(fib, 20))
    end)
  end)

  describe("refusals", function()
    it("refuses a function with upvalues, naming the upvalue", function()
      local secret = 1
      local e = raised(tide.to_thread, function() return secret end)
      assert.matches("bad argument #1 to 'to_thread'", e, 1, true)
      assert.matches("upvalue 'secret'", e, 1, true)
    end)

    it("takes many arguments", function()
      local t = {}
      for i = 1, 300 do t[i] = i end
      assert.equals(300, tide.to_thread(function(...) return select("#", ...) end, table.unpack(t)))
      assert.equals(50, tide.to_thread(function(...) return select("#", ...) end, table.unpack(t, 1, 50)))
    end)

    it("refuses C functions and non-functions", function()
      assert.matches("bad argument #1 to 'to_thread' (Lua function expected, got C function)",
        raised(tide.to_thread, print), 1, true)
      assert.matches("bad argument #1 to 'to_thread' (Lua function expected, got number)",
        raised(tide.to_thread, 1), 1, true)
      local ok, e = pcall(function() tide.to_thread(1) end) -- at the caller's line
      assert.is_false(ok)
      assert.matches("^spec/thread_spec.lua:%d+: bad argument #1 to 'to_thread'", e)
    end)

    it("refuses functions, userdata and threads, naming the argument", function()
      local id = function(...) return ... end
      assert.matches("bad argument #2 to 'to_thread' (cannot send a function)",
        raised(tide.to_thread, id, print), 1, true)
      assert.matches("bad argument #3 to 'to_thread' (cannot send a userdata)",
        raised(tide.to_thread, id, 1, io.stdout), 1, true)
      assert.matches("bad argument #4 to 'to_thread' (cannot send a thread)",
        raised(tide.to_thread, id, nil, nil, coroutine.create(id)), 1, true)
    end)

    it("names the path inside a table, for values and keys", function()
      local id = function(...) return ... end
      assert.matches("bad argument #2 to 'to_thread' (cannot send a function at cfg.hooks[2])",
        raised(tide.to_thread, id, { cfg = { hooks = { 1, print } } }), 1, true)
      assert.matches("bad argument #2 to 'to_thread' (cannot send a userdata key at files)",
        raised(tide.to_thread, id, { files = { [io.stdout] = true } }), 1, true)
      assert.matches([[(cannot send a thread at ["a b"][1.5])]],
        raised(tide.to_thread, id, { ["a b"] = { [1.5] = coroutine.running() } }), 1, true)
    end)

    it("refuses tables nested deeper than 100 levels, naming a shortened path", function()
      local deep = {}
      for _ = 1, 150 do deep = { deep } end
      assert.matches("cannot send a table nested more than 100 deep at [1][1][1] ... [1][1][1])",
        raised(tide.to_thread, function(...) return ... end, deep), 1, true)
      deep = {}
      for _ = 1, 150 do deep = { x = deep } end
      assert.matches("#3 to 'to_thread' (cannot send a table nested more than 100 deep at x.x.x ... x.x.x)",
        raised(tide.to_thread, function(...) return ... end, 1, deep), 1, true)
      deep = { f = print } -- 7 keys down: one left out
      for i = 1, 6 do deep = { ["k" .. i] = deep } end
      assert.matches("(cannot send a function at k6.k5.k4 ... k2.k1.f)",
        raised(tide.to_thread, function(...) return ... end, deep), 1, true)
    end)

    it("refuses what is inside a table key, however deep the keys nest", function()
      local id = function(...) return ... end
      assert.matches("(cannot send a function at (key).b[1])",
        raised(tide.to_thread, id, { [{ b = { print } }] = 1 }), 1, true)
      assert.matches("(cannot send a function key at (key))",
        raised(tide.to_thread, id, { [{ [print] = 1 }] = 1 }), 1, true)
      -- keys nested 60 and 150 deep: each level used to leave its key, value
      -- and message on the stack, which overflowed it (a double free)
      local function chain(n, leaf)
        local d = {}
        local c = d
        for _ = 1, n do local k = {}; c[k] = true; c = k end
        c[1] = leaf
        return d
      end
      assert.matches("(cannot send a function at (key)(key)(key) ... (key)(key)[1])",
        raised(tide.to_thread, id, chain(60, print)), 1, true)
      assert.matches("(cannot send a table nested more than 100 deep at (key)(key)(key) ... ",
        raised(tide.to_thread, id, chain(150)), 1, true)
      local e = raised(tide.to_thread, function(n)
        local d = {}
        local c = d
        for _ = 1, n do local k = {}; c[k] = true; c = k end
        c[1] = print
        return d
      end, 60)
      assert.equals("thread", e.kind)
      assert.matches("cannot send a function at (key)(key)(key) ... (key)(key)[1]", e.message, 1, true)
      assert.same({ 7 }, { tide.to_thread(function(t) return t.x end, { x = 7 }) })
    end)

    it("fails with a thread error when a result cannot travel back", function()
      local e = raised(tide.to_thread, function() return 1, { f = print } end)
      assert.is_true(tide.iserror(e))
      assert.equals("thread", e.kind)
      assert.matches("cannot return result #2 from to_thread: cannot send a function at f",
        e.message, 1, true)
    end)
  end)

  describe("errors", function()
    it("come back as tide errors with the message and the worker's traceback", function()
      local e = raised(tide.to_thread, function(n)
        local function inner(k)
          error("boom " .. k)
        end
        inner(n)
        return "not reached"
      end, 7)
      assert.is_true(tide.iserror(e))
      assert.equals("thread", e.kind)
      assert.matches("^[^\n]*thread_spec%.lua:%d+: boom 7$", e.message)
      assert.equals("string", type(e.traceback))
      assert.matches("boom 7\nstack traceback:", e.traceback, 1, true)
      assert.matches("thread_spec%.lua:%d+: in local 'inner'", e.traceback)
      -- the worker's stack, not the caller's
      assert.is_nil(e.traceback:find("busted", 1, true))
    end)

    it("keep a number raised as a number in e.value", function()
      local e = raised(tide.to_thread, function() error(42) end)
      assert.equals("integer", math.type(e.value))
      assert.equals(42, e.value)
    end)

    it("os.exit in a worker is an error, not the end of the process", function()
      local e = raised(tide.to_thread, function() os.exit(3) end)
      assert.equals("thread", e.kind)
      assert.matches("os.exit cannot be called in a to_thread worker", e.message, 1, true)
      e = raised(tide.to_thread, function() return require("tide") end)
      assert.matches('module "tide" is not available in a to_thread worker', e.message, 1, true)
    end)

    it("keep a table error value as e.value", function()
      local e = raised(tide.to_thread, function() error({ code = 42, message = "bad input" }) end)
      assert.equals("thread", e.kind)
      assert.equals("bad input", e.message)
      assert.same({ code = 42, message = "bad input" }, e.value)
      e = raised(tide.to_thread, function() error(setmetatable({}, { __index = function() end })) end)
      assert.equals("(error object is a table value)", e.message)
    end)

    it("uncaught at the top level, report the worker's traceback too", function()
      local S = require "spec.support"
      local script = S.tmpfile([[
        local tide = require "tide"
        local function work(n)
          local function check(k) if k > 2 then error("too big: " .. k) end end
          check(n)
        end
        tide.to_thread(work, 5)
      ]])
      finally(function() os.remove(script) end)
      local out, err, rc = S.sh(S.tide_bin() .. " " .. script)
      assert.equals(1, rc)
      assert.equals("", out)
      local main, worker = err:match("^(.*)\nre%-raised from the to_thread worker:\n(.*)$")
      assert.is_truthy(main, err)
      assert.matches("too big: 5\nstack traceback:", main)
      assert.matches(":6: in main chunk", main, 1, true)
      assert.matches("too big: 5\nstack traceback:", worker)
      assert.matches(":3: in local 'check'", worker, 1, true)
      assert.matches(":4: in function <", worker, 1, true)
    end)

    it("leave the worker usable", function()
      for i = 1, 5 do
        assert.equals("thread", raised(tide.to_thread, function() error("x") end).kind)
        assert.equals(i, tide.to_thread(function(v) return v end, i))
      end
    end)
  end)

  describe("scheduling", function()
    -- field 19 of /proc/<task>/stat is the nice value (fields counted after
    -- the command name, which may hold spaces)
    local function nice_of(stat) return tonumber(select(17, stat:match("%) (.*)$"):match(("(%S+) "):rep(17)))) end

    it("handles big blocks in workers (tables and strings of megabytes)", function()
      local function big(n)
        local t = {}
        for i = 1, n do t[i] = i end -- the array part grows past 1 MB, block by block
        local sum = 0
        for i = 1, n do sum = sum + t[i] end
        t = nil
        collectgarbage()
        local small = {}
        for i = 1, 10 do small[i] = i end
        return sum, ("x"):rep(3 * 1024 * 1024), #small
      end
      local sum, str, n = tide.to_thread(big, 300000)
      assert.equals(300000 * 300001 // 2, sum)
      assert.equals(3 * 1024 * 1024, #str)
      assert.equals(10, n)
      assert.equals(300000 * 300001 // 2, (tide.to_thread(big, 300000))) -- a reused state
    end)

    it("runs jobs at a lower CPU priority than the loop, and gives it back", function()
      local function thread_stat()
        local f = assert(io.open("/proc/thread-self/stat"))
        local st = f:read("a")
        f:close()
        return st
      end
      local loop_nice = nice_of(thread_stat())
      local worker_nice = nice_of(tide.to_thread(thread_stat))
      assert.equals(math.min(19, loop_nice + 5), worker_nice)
      assert.equals(loop_nice, nice_of(thread_stat()))
    end)

    it("keeps the loop running while a worker blocks", function()
      local ticks, stop = 0, false
      local ticker = tide.spawn(function()
        while not stop do
          tide.sleep(0.01)
          ticks = ticks + 1
        end
      end)
      tide.to_thread(block, 0.3)
      stop = true
      ticker:await()
      assert.is_true(ticks >= 10, "only " .. ticks .. " ticks")
    end)

    it("runs jobs in parallel", function()
      if thread.stats().cap < 3 then return end -- one job at a time (see below)
      local t0 = tide.time()
      local r = tide.gather(function() return tide.to_thread(block, 0.3) end,
        function() return tide.to_thread(block, 0.3) end)
      assert.same({ 0.3, 0.3 }, { r[1], r[2] })
      assert.is_true(tide.time() - t0 < 0.5, "took " .. (tide.time() - t0))
    end)

    it("holds a virtual clock while a job runs, as real I/O does", function()
      local woke = tide.run({ clock = "virtual" }, function()
        local woke = false
        local sleeper = tide.spawn(function() tide.sleep(60); woke = true end)
        tide.to_thread(block, 0.2)
        local early = woke
        sleeper:cancel()
        return early
      end)
      assert.is_false(woke)
    end)

    it("returns at once when cancelled; the job finishes in the background", function()
      local mark = os.tmpname()
      os.remove(mark)
      local t0 = tide.time()
      local e = raised(tide.wait_for, function()
        return tide.to_thread(function(path)
          os.execute("sleep 0.4")
          io.open(path, "w"):close()
          return "dropped"
        end, mark)
      end, 0.05)
      assert.equals("timeout", e.kind)
      assert.is_true(tide.time() - t0 < 0.3, "took " .. (tide.time() - t0))
      assert.is_nil(io.open(mark)) -- still running
      assert.equals(1, tide.to_thread(function() return 1 end)) -- others go on
      local f
      for _ = 1, 100 do -- up to 5 s on a loaded machine; 0.4 s normally
        tide.sleep(0.05)
        f = io.open(mark)
        if f then break end
      end
      assert.is_not_nil(f, "the cancelled job did not finish")
      f:close()
      os.remove(mark)
    end)

    -- Jobs that wait, on their worker thread, until release() is called.
    local function gate()
      local path = os.tmpname()
      os.remove(path)
      local function wait(p, r)
        while not io.open(p) do os.execute("sleep 0.02") end
        return r
      end
      return function(r) return tide.to_thread(wait, path, r) end,
        function() io.open(path, "w"):close() end,
        function() os.remove(path) end
    end

    it("leaves a pool thread to fs and DNS while jobs fill the pool", function()
      local n = thread.stats().cap -- as many jobs as pool threads
      if n < 2 then return end -- a pool of one thread cannot spare one
      local job, release, clean = gate()
      local ts = {}
      for i = 1, n do ts[i] = tide.spawn(job, i) end
      tide.sleep(0.1) -- the jobs are running (or waiting their turn)
      local ok, data = pcall(tide.wait_for, fs_read, 2, "/proc/self/stat")
      release()
      local r = tide.gather(ts)
      clean()
      assert(ok, "an fs call waited for the jobs: " .. tostring(data))
      assert.matches("^%d+ ", data)
      local want = {}
      for i = 1, n do want[i] = i end
      assert.same(want, { table.unpack(r, 1, n) })
    end)

    it("never runs a job cancelled while it waits for its turn", function()
      local job, release, clean = gate()
      local st = thread.stats()
      local mark = os.tmpname()
      os.remove(mark)
      local ts = {}
      for i = 1, math.max(1, st.cap - 1) do ts[i] = tide.spawn(job, i) end
      tide.sleep(0.1)
      local late = tide.spawn(tide.to_thread, function(p) io.open(p, "w"):close() end, mark)
      tide.sleep(0.1)
      late:cancel()
      release()
      tide.gather(ts)
      tide.to_thread(function() end) -- every lane slot has been free since
      tide.sleep(0.1)
      clean()
      local f = io.open(mark)
      if f then f:close() os.remove(mark) end
      assert.is_nil(f, "the cancelled job ran")
      assert.is_true(late:cancelled())
    end)

    it("reuses worker states, at most the thread pool's size", function()
      local bump = function() COUNT = (COUNT or 0) + 1; return COUNT end
      local r, reused = { tide.to_thread(bump) }, 0
      for i = 2, 5 do
        r[i] = tide.to_thread(bump)
        if r[i] == r[i - 1] + 1 then reused = reused + 1 end
      end
      -- sequential jobs find the state the previous one left (one state may
      -- come back from a job still running in the background meanwhile)
      assert.is_true(reused >= 3, table.concat(r, " "))
      local ts = {}
      for i = 1, 8 do ts[i] = function() return tide.to_thread(block, 0.1) end end
      tide.gather(ts)
      local st = thread.stats()
      assert.is_true(st.states >= 1 and st.states <= st.cap, st.states .. " states")
      assert.equals(st.states, st.idle)
      assert.equals(tonumber(os.getenv("UV_THREADPOOL_SIZE") or 4), st.cap)
    end)

    it("runs under the tide command on a pool of cores + 4 unless UV_THREADPOOL_SIZE says", function()
      local process = require "tide.process"
      local TIDE = require("spec.support").tide_bin()
      local code = "print(require('tide.thread').stats().cap, os.getenv('UV_THREADPOOL_SIZE'))"
      local cores = tonumber(process.run({"nproc"}).stdout)
      local r = process.run({TIDE, "-e", code}, {env = {PATH = os.getenv("PATH")}})
      assert.equals(0, r.code, r.stderr)
      -- as Python's default executor: 4 CPU-bound jobs get 2 cores even on 2 cores
      assert.equals(("%d\t%d\n"):format(cores + 4, cores + 4), r.stdout)
      r = process.run({TIDE, "-e", code}, {env = {PATH = os.getenv("PATH"), UV_THREADPOOL_SIZE = "2"}})
      assert.equals("2\t2\n", r.stdout)
    end)
  end)
end)
