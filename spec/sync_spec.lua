-- Specs for tide.Semaphore, tide.BoundedSemaphore, tide.Lock, tide.Event,
-- tide.Condition and tide.Barrier, following asyncio's synchronisation
-- primitives.
-- They run inside the tide host: bodies may suspend.
local tide = require "tide"

local S = require "spec.support"
local virtual, await, gather, turns = S.virtual, S.await, S.gather, S.turns
local errkind, raises_matching = S.errkind, S.raises_matching

-- How many permits sem hands out right now without blocking (takes them
-- with acquire in fresh tasks, then gives them all back).
local function free_permits(sem, limit)
  limit = limit or 10
  local ts = {}
  for i = 1, limit do ts[i] = tide.spawn(function() sem:acquire() end) end
  turns()
  local n = 0
  for i = 1, limit do
    if ts[i]:done() then
      n = n + 1
    else
      ts[i]:cancel()
    end
  end
  turns()
  for _ = 1, n do sem:release() end
  return n
end

-- Runs n workers that hold sem for `hold` seconds each; returns the most
-- that held it at once and the total time (virtual clock).
local function max_concurrency(sem, n, hold)
  return virtual(function()
    local cur, most = 0, 0
    local t0 = tide.time()
    local ts = {}
    for i = 1, n do
      ts[i] = tide.spawn(function()
        local g <close> = sem:acquire()
        cur = cur + 1
        if cur > most then most = cur end
        tide.sleep(hold)
        cur = cur - 1
      end)
    end
    tide.gather(ts)
    return most, tide.time() - t0
  end)
end

describe("tide.Semaphore", function()
  describe(":acquire()", function()
    it("limits how many tasks hold it at once", function()
      local most, elapsed = max_concurrency(tide.Semaphore(3), 10, 1)
      assert.equals(3, most)
      assert.is_true(math.abs(elapsed - 4) < 1e-6, "10 jobs of 1 s, 3 at a time: " .. elapsed)
    end)

    it("defaults to one permit", function()
      local most = max_concurrency(tide.Semaphore(), 4, 1)
      assert.equals(1, most)
    end)

    it("does not suspend while a permit is free", function()
      local sem = tide.Semaphore(2)
      local ran = false
      local t = tide.spawn(function() ran = true end)
      sem:acquire()
      sem:acquire()
      assert.is_false(ran, "acquire() suspended with permits free")
      assert.is_true(sem:locked())
      await(t)
    end)

    it("blocks when no permit is free until a release", function()
      local sem = tide.Semaphore(1)
      sem:acquire()
      local t = tide.spawn(function() sem:acquire(); return "in" end)
      turns()
      assert.is_false(t:done())
      sem:release()
      assert.equals("in", await(t))
      assert.is_true(sem:locked())
    end)

    it("Semaphore(0) blocks until a release", function()
      local sem = tide.Semaphore(0)
      assert.is_true(sem:locked())
      local t = tide.spawn(function() sem:acquire(); return "in" end)
      turns()
      assert.is_false(t:done())
      sem:release()
      assert.equals("in", await(t))
    end)

    it("hands permits out in the order tasks arrived (FIFO)", function()
      virtual(function()
        local sem = tide.Semaphore(1)
        sem:acquire()
        local order = {}
        local ts = {}
        -- spawned 1..5, but arriving 5, 4, 3, 2, 1
        for i = 1, 5 do
          ts[i] = tide.spawn(function()
            tide.sleep((6 - i) * 0.1)
            local g <close> = sem:acquire()
            order[#order + 1] = i
            tide.sleep(0.01)
          end)
        end
        tide.sleep(1)
        sem:release()
        tide.gather(ts)
        assert.same({ 5, 4, 3, 2, 1 }, order)
      end)
    end)

    it("a newcomer cannot barge in ahead of a waiter a release has woken", function()
      local sem = tide.Semaphore(1)
      sem:acquire()
      local order = {}
      local w = tide.spawn(function()
        sem:acquire()
        order[#order + 1] = "waiter"
        tide.sleep(0)
        sem:release()
      end)
      turns()
      sem:release() -- the permit is w's now
      sem:acquire() -- so this one has to wait for w
      order[#order + 1] = "newcomer"
      sem:release()
      await(w)
      assert.same({ "waiter", "newcomer" }, order)
    end)
  end)

  describe(":locked()", function()
    it("is true while a released permit waits for the woken task to take it, and a newcomer queues behind (asyncio 3.12)", function()
      local s = tide.Semaphore(0)
      local log = {}
      local w = tide.spawn(function() s:acquire(); log[#log + 1] = "waiter" end)
      tide.sleep(0)
      s:release() -- the waiter's, though it has not run yet
      s:release() -- free: yet it goes to whoever queued first
      assert.is_true(s:locked())
      s:acquire()
      log[#log + 1] = "newcomer"
      w:await()
      assert.same({ "waiter", "newcomer" }, log)
      assert.is_true(s:locked())
    end)

    it("is true exactly when no permit is free", function()
      local sem = tide.Semaphore(2)
      assert.is_false(sem:locked())
      sem:acquire()
      assert.is_false(sem:locked())
      sem:acquire()
      assert.is_true(sem:locked())
      sem:release()
      assert.is_false(sem:locked())
    end)
  end)

  describe(":release()", function()
    it("may raise the value above its start (unbounded)", function()
      local sem = tide.Semaphore(1)
      sem:release()
      assert.equals(2, free_permits(sem))
    end)
  end)

  describe("guard", function()
    it("`local g <close> = sem:acquire()` releases at scope exit", function()
      local sem = tide.Semaphore(1)
      do
        local g <close> = sem:acquire()
        assert.is_true(sem:locked())
      end
      assert.is_false(sem:locked())
      assert.equals(1, free_permits(sem))
    end)

    it("releases at scope exit on error, and the error passes through", function()
      local sem = tide.Semaphore(1)
      local ok, e = pcall(function()
        local g <close> = sem:acquire()
        error("boom", 0)
      end)
      assert.is_false(ok)
      assert.equals("boom", e)
      assert.is_false(sem:locked())
      assert.equals(1, free_permits(sem))
    end)

    it("releases once when released by hand and again at scope exit", function()
      local sem = tide.Semaphore(1)
      do
        local g <close> = sem:acquire()
        g:release()
        assert.is_false(sem:locked())
      end
      assert.equals(1, free_permits(sem))
    end)

    it("releases when a task holding it fails with an error", function()
      local sem = tide.Semaphore(1)
      local t = tide.spawn(function()
        local g <close> = sem:acquire()
        tide.sleep(0)
        error("boom", 0)
      end)
      turns()
      local ok, e = pcall(await, t)
      assert.is_false(ok)
      assert.equals("boom", e)
      assert.is_false(sem:locked(), "the guard of a failed task was not closed")
    end)

    it("releases when a task holding it is cancelled", function()
      local sem = tide.Semaphore(1)
      local t = tide.spawn(function()
        local g <close> = sem:acquire()
        tide.sleep(100)
      end)
      turns()
      assert.is_true(sem:locked())
      t:cancel()
      assert.equals("cancelled", (errkind(await, t)))
      assert.is_false(sem:locked())
    end)
  end)

  describe("cancellation", function()
    it("a waiter cancelled while queued leaks no permit and loses no turn for others", function()
      local sem = tide.Semaphore(1)
      sem:acquire()
      local w1 = tide.spawn(function() sem:acquire(); return "w1" end)
      local w2 = tide.spawn(function() sem:acquire(); return "w2" end)
      turns()
      w1:cancel()
      turns()
      assert.is_true(w1:cancelled())
      assert.is_false(w2:done())
      sem:release()
      assert.equals("w2", await(w2))
      assert.is_true(sem:locked())
      sem:release()
      assert.equals(1, free_permits(sem))
    end)

    it("a waiter cancelled right after being handed the permit passes it on", function()
      local sem = tide.Semaphore(1)
      sem:acquire()
      local w1 = tide.spawn(function() sem:acquire(); return "w1" end)
      local w2 = tide.spawn(function() sem:acquire(); return "w2" end)
      turns()
      sem:release() -- hands the permit to w1 ...
      w1:cancel() -- ... cancelled before it runs
      assert.equals("cancelled", (errkind(await, w1)))
      assert.equals("w2", await(w2))
      assert.is_true(sem:locked())
      sem:release()
      assert.is_false(sem:locked())
      assert.equals(1, free_permits(sem))
    end)

    it("a lone waiter cancelled after being handed the permit gives it back", function()
      local sem = tide.Semaphore(2)
      sem:acquire(); sem:acquire()
      local w = tide.spawn(function() sem:acquire() end)
      turns()
      sem:release()
      w:cancel()
      assert.equals("cancelled", (errkind(await, w)))
      assert.is_false(sem:locked())
      sem:release()
      assert.equals(2, free_permits(sem))
    end)

    it("a waiter cancelled in the same turn as a release does not get the permit", function()
      local sem = tide.Semaphore(1)
      sem:acquire()
      local w1 = tide.spawn(function() sem:acquire(); return "w1" end)
      local w2 = tide.spawn(function() sem:acquire(); return "w2" end)
      turns()
      w1:cancel() -- cancelled first ...
      sem:release() -- ... then the release: it must go to w2
      assert.equals("cancelled", (errkind(await, w1)))
      assert.equals("w2", await(w2))
      sem:release()
      assert.equals(1, free_permits(sem))
    end)
  end)

  describe("bad arguments", function()
    it("a negative or non-integer value raises with the argument position", function()
      raises_matching("bad argument #1 to 'Semaphore'", tide.Semaphore, -1)
      raises_matching("bad argument #1 to 'Semaphore'", tide.Semaphore, "x")
      raises_matching("bad argument #1 to 'Semaphore'", tide.Semaphore, 1.5)
      raises_matching("bad argument #1 to 'BoundedSemaphore'", tide.BoundedSemaphore, -2)
    end)

    it("accepts a float with an integral value (50 / 5 is 10.0 in Lua 5.4)", function()
      local sem = tide.Semaphore(50 / 5)
      assert.equals(10, free_permits(sem, 12))
    end)

    it("acquire on another kind of object names what it expected and what came", function()
      raises_matching("tide.Semaphore expected, got tide.Event", tide.Semaphore(1).acquire, tide.Event())
    end)

    it("acquire outside any task, when it would wait, raises and takes nothing", function()
      local sem = tide.Semaphore(0)
      local msg
      tide.call_soon(function() msg = select(2, pcall(sem.acquire, sem)) end)
      tide.sleep(0)
      assert.matches("acquire must be called from inside a task", msg)
      sem:release()
      assert.equals(1, free_permits(sem))
    end)

    it("acquire called with '.' raises bad argument #1", function()
      local sem = tide.Semaphore(1)
      raises_matching("bad argument #1 to 'acquire'", sem.acquire)
      assert.is_false(sem:locked())
    end)

    it("release called with '.' raises bad argument #1", function()
      local sem = tide.Semaphore(1)
      raises_matching("bad argument #1 to 'release'", sem.release)
    end)
  end)
end)

describe("tide.BoundedSemaphore", function()
  describe(":release()", function()
    it("raises when released more times than acquired", function()
      local sem = tide.BoundedSemaphore(2)
      assert.equals("invalid_state", (errkind(sem.release, sem)))
      sem:acquire()
      sem:release()
      assert.equals("invalid_state", (errkind(sem.release, sem)))
      assert.equals(2, free_permits(sem))
    end)

    it("allows releases up to the number of acquires", function()
      local sem = tide.BoundedSemaphore(2)
      sem:acquire(); sem:acquire()
      assert.is_true(sem:locked())
      sem:release(); sem:release()
      assert.is_false(sem:locked())
    end)

    it("a release that hands the permit to a waiter is not an over-release", function()
      local sem = tide.BoundedSemaphore(1)
      sem:acquire()
      local w = tide.spawn(function() sem:acquire(); sem:release(); return "w" end)
      turns()
      sem:release()
      assert.equals("w", await(w))
      assert.equals("invalid_state", (errkind(sem.release, sem)))
    end)
  end)

  describe(":acquire()", function()
    it("limits concurrency like a Semaphore", function()
      local most = max_concurrency(tide.BoundedSemaphore(2), 6, 1)
      assert.equals(2, most)
    end)
  end)
end)

describe("tide.Lock", function()
  describe(":acquire()", function()
    it("a cancelled first waiter passes the lock on when it runs, one turn after a release, as asyncio's", function()
      -- asyncio's _wake_up_first looks at the first waiter only: its cancel is on
      -- its way, so nobody is woken until it runs (tide woke the next one at once)
      local lock, log = tide.Lock(), {}
      local function add(s) log[#log + 1] = s end -- (log[#log + 1] = f() takes its slot before f suspends)
      lock:acquire()
      local b = tide.spawn(function() add(pcall(lock.acquire, lock) and "B got" or "B cancelled") end)
      local c = tide.spawn(function() local _ <close> = lock:acquire(); add("C got") end)
      tide.sleep(0)
      local ticker = tide.spawn(function() for i = 1, 3 do add("tick" .. i); tide.sleep(0) end end)
      b:cancel()
      lock:release()
      tide.gather({ b, c, ticker })
      -- what python3 prints for the same program (asyncio.Lock, create_task, sleep(0))
      assert.equals("tick1 B cancelled tick2 C got tick3", table.concat(log, " "))
    end)

    it("gives mutual exclusion to a read-sleep-write critical section", function()
      virtual(function()
        local lock = tide.Lock()
        local counter = 0
        local ts = {}
        for i = 1, 5 do
          ts[i] = tide.spawn(function()
            for _ = 1, 3 do
              local g <close> = lock:acquire()
              local v = counter
              tide.sleep(0.01)
              counter = v + 1
            end
          end)
        end
        tide.gather(ts)
        assert.equals(15, counter)
      end)
    end)

    it("is FIFO among waiters", function()
      local lock = tide.Lock()
      lock:acquire()
      local order = {}
      local ts = {}
      for i = 1, 4 do
        ts[i] = tide.spawn(function()
          local g <close> = lock:acquire()
          order[#order + 1] = i
        end)
        tide.sleep(0)
      end
      lock:release()
      gather(ts)
      assert.same({ 1, 2, 3, 4 }, order)
    end)
  end)

  describe(":locked()", function()
    it("reports whether the lock is held", function()
      local lock = tide.Lock()
      assert.is_false(lock:locked())
      do
        local g <close> = lock:acquire()
        assert.is_true(lock:locked())
      end
      assert.is_false(lock:locked())
    end)
  end)

  describe(":release()", function()
    it("unlocks at once; the woken waiter takes the lock when it runs (asyncio)", function()
      local lock = tide.Lock()
      lock:acquire()
      local w = tide.spawn(function() lock:acquire(); return "w" end)
      turns()
      lock:release()
      assert.is_false(lock:locked())
      assert.equals("w", await(w))
      assert.is_true(lock:locked())
      lock:release()
    end)

    it("a second release while a waiter is being woken raises; no two holders", function()
      local lock = tide.Lock()
      lock:acquire()
      local inside, most = 0, 0
      local function worker()
        local g <close> = lock:acquire()
        inside = inside + 1
        most = math.max(most, inside)
        tide.sleep(0.001)
        inside = inside - 1
      end
      local ts = { tide.spawn(worker), tide.spawn(worker) }
      turns()
      lock:release()
      assert.equals("invalid_state", (errkind(lock.release, lock)))
      gather(ts)
      assert.equals(1, most)
      assert.is_false(lock:locked())
    end)

    it("a newcomer queues behind the waiter a release woke (no barging)", function()
      local lock = tide.Lock()
      lock:acquire()
      local order = {}
      local w = tide.spawn(function() lock:acquire(); order[#order + 1] = "waiter"; lock:release() end)
      turns()
      lock:release()
      local n = tide.spawn(function() lock:acquire(); order[#order + 1] = "newcomer"; lock:release() end)
      gather({ w, n })
      assert.same({ "waiter", "newcomer" }, order)
    end)

    it("raises when the lock is not held", function()
      local lock = tide.Lock()
      assert.equals("invalid_state", (errkind(lock.release, lock)))
      lock:acquire()
      lock:release()
      assert.equals("invalid_state", (errkind(lock.release, lock)))
      assert.is_false(lock:locked())
    end)
  end)

  describe("cancellation", function()
    it("a waiter cancelled right after being handed the lock passes it on", function()
      local lock = tide.Lock()
      lock:acquire()
      local w1 = tide.spawn(function() lock:acquire(); return "w1" end)
      local w2 = tide.spawn(function() lock:acquire(); return "w2" end)
      turns()
      lock:release()
      w1:cancel()
      assert.equals("cancelled", (errkind(await, w1)))
      assert.equals("w2", await(w2))
      assert.is_true(lock:locked())
      lock:release()
      assert.is_false(lock:locked())
      assert.equals("invalid_state", (errkind(lock.release, lock)))
    end)

    it("a lone waiter cancelled after being handed the lock leaves it unlocked", function()
      local lock = tide.Lock()
      lock:acquire()
      local w = tide.spawn(function() lock:acquire() end)
      turns()
      lock:release()
      w:cancel()
      assert.equals("cancelled", (errkind(await, w)))
      assert.is_false(lock:locked())
      lock:acquire()
      assert.is_true(lock:locked())
      lock:release()
    end)
  end)
end)

describe("tide.Event", function()
  describe(":set() :clear() :is_set()", function()
    it("starts unset and follows set and clear", function()
      local ev = tide.Event()
      assert.is_false(ev:is_set())
      ev:set()
      assert.is_true(ev:is_set())
      ev:set()
      assert.is_true(ev:is_set())
      ev:clear()
      assert.is_false(ev:is_set())
    end)
  end)

  describe(":wait()", function()
    it("returns true at once, without suspending, when set", function()
      local ev = tide.Event()
      ev:set()
      local ran = false
      local t = tide.spawn(function() ran = true end)
      assert.is_true(ev:wait())
      assert.is_false(ran)
      await(t)
    end)

    it("set wakes every waiter, and each wait returns true", function()
      local ev = tide.Event()
      local ts = {}
      for i = 1, 4 do ts[i] = tide.spawn(function() return ev:wait() end) end
      turns()
      for i = 1, 4 do assert.is_false(ts[i]:done()) end
      ev:set()
      local r = gather(ts)
      for i = 1, 4 do assert.is_true(r[i]) end
    end)

    it("after clear, wait blocks again until the next set", function()
      local ev = tide.Event()
      ev:set()
      ev:clear()
      local t = tide.spawn(function() return ev:wait() end)
      turns()
      assert.is_false(t:done())
      ev:set()
      assert.is_true(await(t))
    end)

    it("waiters woken by set still return if clear follows in the same turn", function()
      local ev = tide.Event()
      local t = tide.spawn(function() return ev:wait() end)
      turns()
      ev:set()
      ev:clear()
      assert.is_true(await(t))
      assert.is_false(ev:is_set())
    end)

    it("a cancelled waiter does not stop the others being woken", function()
      local ev = tide.Event()
      local a = tide.spawn(function() return ev:wait() end)
      local b = tide.spawn(function() return ev:wait() end)
      turns()
      a:cancel()
      turns()
      ev:set()
      assert.is_true(await(b))
      assert.is_true(a:cancelled())
    end)

    it("times out with tide.wait_for when never set", function()
      virtual(function()
        local ev = tide.Event()
        local ok, e = pcall(tide.wait_for, function() return ev:wait() end, 5)
        assert.is_false(ok)
        assert.equals("timeout", e.kind)
      end)
    end)
  end)
end)

describe("tide.Condition", function()
  describe(":wait()", function()
    it("raises when the lock is not held", function()
      local c = tide.Condition()
      assert.equals("invalid_state", (errkind(c.wait, c)))
    end)

    it("outside any task raises before giving the lock away", function()
      local c = tide.Condition()
      local msg, held
      tide.call_soon(function()
        c:acquire()
        msg = select(2, pcall(c.wait, c))
        held = c:locked()
      end)
      tide.sleep(0)
      assert.matches("wait must be called from inside a task", msg)
      assert.is_true(held)
      c:release()
    end)

    it("releases the lock while waiting and holds it again when it returns", function()
      local c = tide.Condition()
      local held_after
      local w = tide.spawn(function()
        local g <close> = c:acquire()
        local r = c:wait()
        held_after = c:locked()
        return r
      end)
      turns()
      assert.is_false(c:locked(), "the waiter kept the lock while waiting")
      do
        local g <close> = c:acquire()
        c:notify()
        turns()
        assert.is_false(w:done(), "wait returned without the lock")
      end
      assert.is_true(await(w))
      assert.is_true(held_after)
      assert.is_false(c:locked())
    end)

    it("a waiter cancelled while waiting re-acquires the lock before raising", function()
      local c = tide.Condition()
      local held, kind
      local w = tide.spawn(function()
        c:acquire()
        local ok, e = pcall(c.wait, c)
        held = c:locked()
        kind = not ok and e.kind
        c:release()
      end)
      turns()
      c:acquire()
      w:cancel()
      turns()
      assert.is_false(w:done(), "the cancelled waiter went on without the lock")
      c:release()
      await(w)
      assert.is_true(held)
      assert.equals("cancelled", kind)
      assert.is_false(c:locked())
    end)

    it("a waiter notified and cancelled in the same turn passes the notification on", function()
      local c = tide.Condition()
      -- (releases by hand, so this does not depend on <close> in a failing task)
      local function waiter(name)
        return function()
          c:acquire()
          local ok, e = pcall(c.wait, c)
          c:release()
          if not ok then error(e, 0) end
          return name
        end
      end
      local w1 = tide.spawn(waiter("w1"))
      local w2 = tide.spawn(waiter("w2"))
      turns()
      do
        local g <close> = c:acquire()
        c:notify(1)
        w1:cancel()
      end
      assert.equals("cancelled", (errkind(await, w1)))
      turns()
      assert.is_true(w2:done(), "the notification was lost with the cancelled waiter")
      assert.equals("w2", w2:result())
    end)
  end)

  describe(":notify()", function()
    local function start_waiters(c, n, log)
      local ts = {}
      for i = 1, n do
        ts[i] = tide.spawn(function()
          local g <close> = c:acquire()
          c:wait()
          log[#log + 1] = i
        end)
        tide.sleep(0)
      end
      turns()
      return ts
    end

    local function count_done(ts)
      local n = 0
      for _, t in ipairs(ts) do if t:done() then n = n + 1 end end
      return n
    end

    it("raises when the lock is not held", function()
      local c = tide.Condition()
      assert.equals("invalid_state", (errkind(c.notify, c)))
      assert.equals("invalid_state", (errkind(c.notify_all, c)))
    end)

    it("notify() wakes one waiter, the first to wait", function()
      local c = tide.Condition()
      local log = {}
      local ts = start_waiters(c, 3, log)
      do local g <close> = c:acquire(); c:notify() end
      turns()
      assert.equals(1, count_done(ts))
      assert.same({ 1 }, log)
      do local g <close> = c:acquire(); c:notify_all() end
      gather(ts)
    end)

    it("notify(n) wakes n waiters in the order they waited", function()
      local c = tide.Condition()
      local log = {}
      local ts = start_waiters(c, 4, log)
      do local g <close> = c:acquire(); c:notify(2) end
      turns(5)
      assert.equals(2, count_done(ts))
      assert.same({ 1, 2 }, log)
      do local g <close> = c:acquire(); c:notify(5) end -- more than are waiting
      gather(ts)
      assert.same({ 1, 2, 3, 4 }, log)
    end)

    it("notify_all() wakes every waiter, each running with the lock in turn", function()
      local c = tide.Condition()
      local inside, most = 0, 0
      local ts = {}
      for i = 1, 4 do
        ts[i] = tide.spawn(function()
          local g <close> = c:acquire()
          c:wait()
          inside = inside + 1
          if inside > most then most = inside end
          tide.sleep(0)
          inside = inside - 1
        end)
      end
      turns()
      do local g <close> = c:acquire(); c:notify_all() end
      gather(ts)
      assert.equals(1, most)
    end)

    it("notify with no waiters is not remembered", function()
      local c = tide.Condition()
      do local g <close> = c:acquire(); c:notify() end
      local w = tide.spawn(function()
        local g <close> = c:acquire()
        c:wait()
      end)
      turns()
      assert.is_false(w:done())
      do local g <close> = c:acquire(); c:notify() end
      await(w)
    end)
  end)

  describe(":wait_for()", function()
    it("returns the predicate's value at once when it is already true", function()
      local c = tide.Condition()
      local g <close> = c:acquire()
      local calls = 0
      assert.equals("ready", c:wait_for(function() calls = calls + 1; return "ready" end))
      assert.equals(1, calls)
    end)

    it("waits through notifications until the predicate holds", function()
      local c = tide.Condition()
      local value = 0
      local w = tide.spawn(function()
        local g <close> = c:acquire()
        return c:wait_for(function() return value >= 3 and value end)
      end)
      turns()
      for _ = 1, 3 do
        assert.is_false(w:done())
        do local g <close> = c:acquire(); value = value + 1; c:notify_all() end
        turns()
      end
      assert.equals(3, await(w))
    end)

    it("needs a function", function()
      local c = tide.Condition()
      local g <close> = c:acquire()
      raises_matching("bad argument #1 to 'wait_for'", c.wait_for, c, "x")
    end)
  end)

  describe("tide.Condition(lock)", function()
    it("shares the given lock", function()
      local lock = tide.Lock()
      local c = tide.Condition(lock)
      lock:acquire()
      assert.is_true(c:locked())
      c:release()
      assert.is_false(lock:locked())
    end)

    it("rejects something that is not a tide.Lock", function()
      raises_matching("bad argument #1 to 'Condition'", tide.Condition, "x")
      raises_matching("tide.Lock expected, got tide.Semaphore", tide.Condition, tide.Semaphore(1))
    end)

    it("its lock methods called with '.' raise bad argument #1", function()
      local c = tide.Condition()
      raises_matching("bad argument #1 to 'acquire' (tide.Condition expected", c.acquire)
      raises_matching("bad argument #1 to 'release' (tide.Condition expected", c.release)
      raises_matching("bad argument #1 to 'locked' (tide.Condition expected", c.locked)
    end)

    it("notify takes a non-negative integer count", function()
      local c = tide.Condition()
      local g <close> = c:acquire()
      raises_matching("bad argument #1 to 'notify'", c.notify, c, "x")
      raises_matching("bad argument #1 to 'notify'", c.notify, c, 1.5)
      raises_matching("bad argument #1 to 'notify'", c.notify, c, -1)
      c:notify(0)
    end)

    it("a producer/consumer pair hands items over with wait_for", function()
      local c = tide.Condition()
      local items = {}
      local got = {}
      local consumer = tide.spawn(function()
        for _ = 1, 5 do
          local g <close> = c:acquire()
          c:wait_for(function() return #items > 0 end)
          got[#got + 1] = table.remove(items, 1)
        end
      end)
      for i = 1, 5 do
        do local g <close> = c:acquire(); items[#items + 1] = i; c:notify() end
        tide.sleep(0)
      end
      await(consumer)
      assert.same({ 1, 2, 3, 4, 5 }, got)
    end)
  end)
end)

describe("tide.Barrier", function()
  -- a barrier of n with one task waiting in it, and that task
  local function one_waiting(n)
    local b = tide.Barrier(n)
    local w = tide.spawn(b.wait, b)
    turns(2)
    return b, w
  end

  -- the results of n tasks waiting on b at once (at most 2 s)
  local function all_wait(b, n)
    local fns = {}
    for i = 1, n do fns[i] = function() return b:wait() end end
    return tide.wait_for(tide.gather, 2, fns)
  end

  it("lets parties tasks go on together once the last arrives, each with its arrival number", function()
    virtual(function()
      local b = tide.Barrier(3)
      local t0 = tide.time()
      local ts = {}
      for i = 1, 3 do ts[i] = tide.spawn(function() tide.sleep(i); return b:wait(), tide.time() end) end
      tide.sleep(2.5)
      assert.equals(2, b.n_waiting)
      assert.is_false(b.broken)
      local idx, at = {}, {}
      for i, t in ipairs(ts) do idx[i], at[i] = t:await() end
      assert.same({ 0, 1, 2 }, idx) -- asyncio's 0 .. parties - 1, in arrival order
      assert.is_true(at[1] == at[2] and at[2] == at[3], "went on at once")
      assert.is_true(math.abs(at[1] - t0 - 3) < 1e-6, "when the last came")
      assert.equals(0, b.n_waiting)
      local again = tide.gather(function() return b:wait() end, function() return b:wait() end,
        function() return b:wait() end) -- and it fills again
      table.sort(again)
      assert.same({ 0, 1, 2 }, again)
    end)
  end)

  it("reset() breaks the wait of those in it with kind broken_barrier and stays usable", function()
    local b, w = one_waiting(2)
    b:reset()
    assert.equals("broken_barrier", errkind(w.await, w))
    assert.is_false(b.broken)
    local r = all_wait(b, 2)
    table.sort(r)
    assert.same({ 0, 1 }, r)
  end)

  it("abort() breaks it for good", function()
    local b, w = one_waiting(2)
    b:abort()
    assert.equals("broken_barrier", errkind(w.await, w))
    assert.is_true(b.broken)
    assert.equals("broken_barrier", errkind(b.wait, b))
  end)

  it("a cancelled waiter leaves without breaking it", function()
    local b, w = one_waiting(2)
    assert.equals(1, b.n_waiting)
    w:cancel()
    assert.equals("cancelled", errkind(w.await, w))
    assert.equals(0, b.n_waiting)
    assert.is_false(b.broken)
    assert.equals(2, #all_wait(b, 2))
  end)

  it("refuses a count that is not a positive integer", function()
    raises_matching("bad argument #1 to 'Barrier' (positive integer parties expected, got 0)", tide.Barrier, 0)
    raises_matching("got string", tide.Barrier, "x")
  end)
end)
