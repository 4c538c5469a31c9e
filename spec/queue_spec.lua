-- Specs for tide.Queue, tide.PriorityQueue and tide.LifoQueue, following
-- asyncio.Queue (Python 3.13: task_done/join, shutdown([immediate])).
-- They run inside the tide host: bodies may suspend.
local tide = require "tide"

local S = require "spec.support"
local virtual, await, gather, turns = S.virtual, S.await, S.gather, S.turns
local errkind, raises_matching = S.errkind, S.raises_matching

-- Drains q with get_nowait, returning the items in an array with n.
local function drain(q)
  local out = { n = 0 }
  while not q:empty() do
    out.n = out.n + 1
    out[out.n] = q:get_nowait()
  end
  return out
end

local KINDS = {
  { "tide.Queue", tide.Queue },
  { "tide.LifoQueue", tide.LifoQueue },
  { "tide.PriorityQueue", tide.PriorityQueue },
}

describe("tide.Queue", function()
  describe("order", function()
    it("get returns items first in, first out", function()
      local q = tide.Queue()
      for _, v in ipairs { "a", "b", "c", "d" } do q:put(v) end
      assert.same({ "a", "b", "c", "d", n = 4 }, drain(q))
    end)

    it("keeps FIFO order when puts and gets interleave", function()
      local q = tide.Queue()
      q:put(1); q:put(2)
      assert.equals(1, q:get())
      q:put(3)
      assert.equals(2, q:get())
      q:put(4); q:put(5)
      assert.same({ 3, 4, 5, n = 3 }, drain(q))
    end)

    it("keeps order over many items (storage does not drift)", function()
      local q = tide.Queue()
      local expect, got = {}, {}
      for round = 1, 50 do
        for i = 1, 7 do q:put_nowait(round * 10 + i); expect[#expect + 1] = round * 10 + i end
        for _ = 1, 5 do got[#got + 1] = q:get_nowait() end
      end
      while not q:empty() do got[#got + 1] = q:get_nowait() end
      assert.same(expect, got)
    end)
  end)

  describe("nil items", function()
    it("nil is a valid item and keeps its place", function()
      local q = tide.Queue()
      q:put(1); q:put(nil); q:put(3)
      assert.equals(3, q:qsize())
      assert.equals(1, q:get())
      assert.is_false(q:empty())
      assert.is_nil(q:get())
      assert.equals(1, q:qsize())
      assert.equals(3, q:get())
      assert.is_true(q:empty())
    end)

    it("put_nowait(nil) then get_nowait() gives back nil and empties the queue", function()
      local q = tide.Queue(1)
      q:put_nowait(nil)
      assert.is_true(q:full())
      assert.is_nil(q:get_nowait())
      assert.is_true(q:empty())
      assert.equals("queue_empty", (errkind(q.get_nowait, q)))
    end)

    it("a blocked getter is woken by a nil item", function()
      local q = tide.Queue()
      local t = tide.spawn(function() return "got", q:get() end)
      turns()
      assert.is_false(t:done())
      q:put(nil)
      local tag, v = await(t)
      assert.equals("got", tag)
      assert.is_nil(v)
      assert.equals(0, q:qsize())
    end)

    it("a nil sentinel per consumer stops every consumer after all items", function()
      local q = tide.Queue(2)
      local seen = {}
      local function consumer(id)
        local count = 0
        while true do
          local v = q:get()
          if v == nil then break end
          seen[#seen + 1] = v
          count = count + 1
          tide.sleep(0)
        end
        return count
      end
      local c1, c2, c3 = tide.spawn(consumer, 1), tide.spawn(consumer, 2), tide.spawn(consumer, 3)
      for i = 1, 20 do q:put(i) end
      for _ = 1, 3 do q:put(nil) end
      local n1, n2, n3 = await(c1), await(c2), await(c3)
      assert.equals(20, n1 + n2 + n3)
      table.sort(seen)
      local expect = {}
      for i = 1, 20 do expect[i] = i end
      assert.same(expect, seen)
      assert.is_true(q:empty())
    end)
  end)

  describe(":get()", function()
    it("returns at once, without suspending, when an item is there", function()
      local q = tide.Queue()
      q:put("x")
      local ran = false
      local t = tide.spawn(function() ran = true end)
      assert.equals("x", q:get())
      assert.is_false(ran, "get() suspended although an item was queued")
      await(t)
    end)

    it("blocks on an empty queue until an item is put", function()
      local q = tide.Queue()
      local t = tide.spawn(function() return q:get() end)
      turns()
      assert.is_false(t:done())
      q:put("late")
      assert.equals("late", await(t))
    end)

    it("wakes blocked getters in the order they arrived", function()
      local q = tide.Queue()
      local got = {}
      local ts = {}
      for i = 1, 4 do
        ts[i] = tide.spawn(function() got[i] = q:get() end)
        tide.sleep(0) -- make arrival order explicit
      end
      for _, v in ipairs { "a", "b", "c", "d" } do q:put(v) end
      gather(ts)
      assert.same({ "a", "b", "c", "d" }, got)
    end)

    it("with many getters and one put, exactly one getter gets the item", function()
      local q = tide.Queue()
      local ts = {}
      for i = 1, 3 do ts[i] = tide.spawn(function() return q:get() end) end
      turns()
      q:put("only")
      turns()
      local done = 0
      for i = 1, 3 do if ts[i]:done() then done = done + 1 end end
      assert.equals(1, done)
      assert.equals("only", ts[1]:result())
      for i = 2, 3 do ts[i]:cancel() end
      turns()
    end)
  end)

  describe(":get_nowait()", function()
    it("raises a tide error of kind queue_empty on an empty queue", function()
      local q = tide.Queue()
      local kind, e = errkind(q.get_nowait, q)
      assert.equals("queue_empty", kind)
      assert.is_string(e.message)
    end)

    it("returns the first item when there is one", function()
      local q = tide.Queue()
      q:put_nowait(7); q:put_nowait(8)
      assert.equals(7, q:get_nowait())
      assert.equals(1, q:qsize())
    end)
  end)

  describe("maxsize", function()
    it("put blocks on a full queue and is woken by a get", function()
      local q = tide.Queue(2)
      q:put(1); q:put(2)
      assert.is_true(q:full())
      local t = tide.spawn(function() q:put(3); return "put" end)
      turns()
      assert.is_false(t:done(), "put did not block on a full queue")
      assert.equals(2, q:qsize())
      assert.equals(1, q:get())
      assert.equals("put", await(t))
      assert.equals(2, q:qsize())
      assert.same({ 2, 3, n = 2 }, drain(q))
    end)

    it("blocked putters put in the order they arrived", function()
      local q = tide.Queue(1)
      q:put("a")
      local ts = {}
      for i, v in ipairs { "b", "c", "d" } do
        ts[i] = tide.spawn(function() q:put(v) end)
        tide.sleep(0)
      end
      local got = {}
      for _ = 1, 4 do got[#got + 1] = q:get() end
      gather(ts)
      assert.same({ "a", "b", "c", "d" }, got)
      assert.is_true(q:empty())
    end)

    it("put_nowait raises a tide error of kind queue_full and leaves the queue as it was", function()
      local q = tide.Queue(1)
      q:put_nowait("a")
      local kind = errkind(q.put_nowait, q, "b")
      assert.equals("queue_full", kind)
      assert.equals(1, q:qsize())
      assert.equals("a", q:get_nowait())
      assert.is_true(q:empty())
    end)

    it("a producer faster than its consumer is held back to maxsize", function()
      virtual(function()
        local q = tide.Queue(3)
        local most = 0
        local producer = tide.spawn(function()
          for i = 1, 10 do
            q:put(i)
            if q:qsize() > most then most = q:qsize() end
          end
        end)
        local got = {}
        for _ = 1, 10 do
          tide.sleep(1)
          got[#got + 1] = q:get()
        end
        producer:await()
        assert.equals(3, most)
        assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, got)
      end)
    end)

    it("maxsize 0 (the default) or below is unbounded", function()
      for _, q in ipairs { tide.Queue(), tide.Queue(0), tide.Queue(-1) } do
        for i = 1, 1000 do q:put_nowait(i) end
        assert.is_false(q:full())
        assert.equals(1000, q:qsize())
      end
    end)
  end)

  describe(":qsize() :empty() :full()", function()
    it("report the number of items and the bounds", function()
      local q = tide.Queue(2)
      assert.equals(0, q:qsize())
      assert.is_true(q:empty())
      assert.is_false(q:full())
      q:put(1)
      assert.equals(1, q:qsize())
      assert.is_false(q:empty())
      assert.is_false(q:full())
      q:put(2)
      assert.equals(2, q:qsize())
      assert.is_true(q:full())
      q:get()
      assert.equals(1, q:qsize())
      assert.is_false(q:full())
    end)
  end)

  describe(":task_done() and :join()", function()
    it("join returns at once when nothing was put", function()
      local q = tide.Queue()
      local ran = false
      local t = tide.spawn(function() ran = true end)
      q:join()
      assert.is_false(ran, "join() suspended with no unfinished items")
      await(t)
    end)

    it("join waits until every item put has been marked done", function()
      local q = tide.Queue()
      for i = 1, 3 do q:put(i) end
      local joined = tide.spawn(function() q:join(); return "joined" end)
      turns()
      assert.is_false(joined:done())
      for _ = 1, 3 do q:get() end
      turns()
      assert.is_false(joined:done(), "join returned when items were got but not done")
      q:task_done(); q:task_done()
      turns()
      assert.is_false(joined:done(), "join returned with one item unfinished")
      q:task_done()
      assert.equals("joined", await(joined))
    end)

    it("a woken joiner returns even if an item is put before it runs (asyncio)", function()
      local q = tide.Queue()
      q:put(1)
      local joined = tide.spawn(function() q:join(); return "joined" end)
      turns()
      q:get()
      q:task_done()
      q:put(2)
      assert.equals("joined", await(joined))
      assert.equals(1, q:qsize())
    end)

    it("releases every joiner", function()
      local q = tide.Queue()
      q:put("x")
      local js = {}
      for i = 1, 3 do js[i] = tide.spawn(function() q:join(); return i end) end
      turns()
      for i = 1, 3 do assert.is_false(js[i]:done()) end
      q:get(); q:task_done()
      local r = gather(js)
      assert.same({ 1, 2, 3 }, { r[1], r[2], r[3] })
    end)

    it("workers marking items done let a producer's join return", function()
      virtual(function()
        local q = tide.Queue()
        local processed = 0
        local workers = {}
        for w = 1, 3 do
          workers[w] = tide.spawn(function()
            while true do
              local d = q:get()
              tide.sleep(d)
              processed = processed + 1
              q:task_done()
            end
          end)
        end
        for i = 1, 9 do q:put(i) end
        q:join()
        assert.equals(9, processed)
        for w = 1, 3 do workers[w]:cancel() end
        for w = 1, 3 do
          assert.equals("cancelled", (errkind(workers[w].await, workers[w])))
        end
      end)
    end)

    it("task_done called more times than items were put raises", function()
      local q = tide.Queue()
      assert.equals("invalid_state", (errkind(q.task_done, q)))
      q:put(1)
      q:get()
      q:task_done()
      assert.equals("invalid_state", (errkind(q.task_done, q)))
      -- and the count did not go negative: a new item makes join wait again
      q:put(2)
      local j = tide.spawn(function() q:join() end)
      turns()
      assert.is_false(j:done())
      q:get(); q:task_done()
      await(j)
    end)

    it("a cancelled joiner leaves other joiners waiting and then released", function()
      local q = tide.Queue()
      q:put(1)
      local j1 = tide.spawn(function() q:join(); return 1 end)
      local j2 = tide.spawn(function() q:join(); return 2 end)
      turns()
      j1:cancel()
      turns()
      assert.is_true(j1:cancelled())
      assert.is_false(j2:done())
      q:get(); q:task_done()
      assert.equals(2, await(j2))
    end)
  end)

  describe(":shutdown()", function()
    it("makes put and put_nowait raise kind queue_shutdown", function()
      local q = tide.Queue()
      q:put(1)
      q:shutdown()
      assert.equals("queue_shutdown", (errkind(q.put, q, 2)))
      assert.equals("queue_shutdown", (errkind(q.put_nowait, q, 2)))
      assert.equals(1, q:qsize())
    end)

    it("lets get drain the items left, then raises queue_shutdown", function()
      local q = tide.Queue()
      q:put("a"); q:put("b")
      q:shutdown()
      assert.equals("a", q:get())
      assert.equals("b", q:get_nowait())
      assert.equals("queue_shutdown", (errkind(q.get, q)))
      assert.equals("queue_shutdown", (errkind(q.get_nowait, q)))
    end)

    it("without immediate, join still waits for the items left", function()
      local q = tide.Queue()
      q:put("a")
      q:shutdown()
      local j = tide.spawn(function() q:join() end)
      turns()
      assert.is_false(j:done())
      q:get(); q:task_done()
      await(j)
    end)

    it("wakes blocked getters, which raise queue_shutdown", function()
      local q = tide.Queue()
      local g1 = tide.spawn(function() return q:get() end)
      local g2 = tide.spawn(function() return q:get() end)
      turns()
      assert.is_false(g1:done())
      q:shutdown()
      assert.equals("queue_shutdown", (errkind(await, g1)))
      assert.equals("queue_shutdown", (errkind(await, g2)))
    end)

    it("wakes blocked putters, which raise queue_shutdown without putting", function()
      local q = tide.Queue(1)
      q:put("kept")
      local p = tide.spawn(function() q:put("dropped") end)
      turns()
      assert.is_false(p:done())
      q:shutdown()
      assert.equals("queue_shutdown", (errkind(await, p)))
      assert.equals(1, q:qsize())
      assert.equals("kept", q:get())
      assert.equals("queue_shutdown", (errkind(q.get_nowait, q)))
    end)

    it("immediate drops the items left and releases join", function()
      local q = tide.Queue()
      for i = 1, 3 do q:put(i) end
      local j = tide.spawn(function() q:join(); return "joined" end)
      turns()
      assert.is_false(j:done())
      q:shutdown(true)
      assert.equals(0, q:qsize())
      assert.is_true(q:empty())
      assert.equals("joined", await(j))
      assert.equals("queue_shutdown", (errkind(q.get, q)))
      assert.equals("queue_shutdown", (errkind(q.put, q, 4)))
    end)

    it("immediate keeps join waiting for items already got but not yet done", function()
      local q = tide.Queue()
      q:put(1); q:put(2)
      assert.equals(1, q:get())
      local j = tide.spawn(function() q:join() end)
      q:shutdown(true)
      turns()
      assert.is_false(j:done(), "join returned with a got item not marked done")
      q:task_done()
      await(j)
      assert.equals("invalid_state", (errkind(q.task_done, q)))
    end)

    it("immediate wakes blocked putters, which raise and put nothing", function()
      local q = tide.Queue(1)
      q:put("a")
      local p = tide.spawn(function() q:put("b") end)
      turns()
      q:shutdown(true)
      assert.equals("queue_shutdown", (errkind(await, p)))
      assert.equals(0, q:qsize())
    end)
  end)

  describe("cancellation", function()
    it("a getter cancelled while blocked takes no item: it stays in the queue", function()
      local q = tide.Queue()
      local g = tide.spawn(function() return q:get() end)
      turns()
      g:cancel()
      turns()
      assert.is_true(g:cancelled())
      q:put("x")
      assert.equals(1, q:qsize())
      assert.equals("x", q:get())
    end)

    it("a getter cancelled while blocked loses no item: the next getter gets it", function()
      local q = tide.Queue()
      local g1 = tide.spawn(function() return q:get() end)
      local g2 = tide.spawn(function() return q:get() end)
      turns()
      g1:cancel()
      q:put("x") -- same turn: g1's cancellation has not run yet
      assert.equals("x", await(g2))
      assert.is_true(g1:cancelled())
      assert.is_true(q:empty())
    end)

    it("a getter woken and cancelled in the same turn passes the item on", function()
      local q = tide.Queue()
      local g1 = tide.spawn(function() return q:get() end)
      local g2 = tide.spawn(function() return q:get() end)
      turns()
      q:put("x") -- wakes g1 ...
      g1:cancel() -- ... which is cancelled before it runs
      assert.equals("cancelled", (errkind(await, g1)))
      turns()
      assert.is_true(g2:done(), "the item was not passed on to the next getter")
      assert.equals("x", g2:result())
      assert.is_true(q:empty())
    end)

    it("a lone getter woken and cancelled in the same turn leaves the item queued", function()
      local q = tide.Queue()
      local g = tide.spawn(function() return q:get() end)
      turns()
      q:put("x")
      g:cancel()
      assert.equals("cancelled", (errkind(await, g)))
      assert.equals(1, q:qsize())
      assert.equals("x", q:get_nowait())
    end)

    it("a cancelled blocked putter does not insert its item", function()
      local q = tide.Queue(1)
      q:put("a")
      local p = tide.spawn(function() q:put("b") end)
      turns()
      p:cancel()
      assert.equals("cancelled", (errkind(await, p)))
      assert.equals("a", q:get())
      turns()
      assert.is_true(q:empty())
    end)

    it("a putter woken and cancelled in the same turn passes the free slot on", function()
      local q = tide.Queue(1)
      q:put("a")
      local p1 = tide.spawn(function() q:put("b") end)
      local p2 = tide.spawn(function() q:put("c") end)
      turns()
      assert.equals("a", q:get()) -- wakes p1 ...
      p1:cancel() -- ... which is cancelled before it runs
      assert.equals("cancelled", (errkind(await, p1)))
      await(p2)
      assert.same({ "c", n = 1 }, drain(q))
    end)

    it("an item put by a cancelled producer is counted for join only if it was put", function()
      local q = tide.Queue(1)
      q:put("a")
      local p = tide.spawn(function() q:put("b") end)
      turns()
      p:cancel()
      turns()
      q:get(); q:task_done()
      local j = tide.spawn(function() q:join(); return "joined" end)
      assert.equals("joined", await(j))
    end)
  end)

  describe("bad arguments", function()
    it("a maxsize that is not an integer raises with the argument position", function()
      raises_matching("bad argument #1 to 'Queue'", tide.Queue, "x")
      raises_matching("integer maxsize expected, got 1.5", tide.Queue, 1.5)
      raises_matching("integer maxsize expected, got inf", tide.Queue, math.huge)
      raises_matching("bad argument #1 to 'Queue'", tide.Queue, {})
      raises_matching("bad argument #1 to 'LifoQueue'", tide.LifoQueue, "x")
      raises_matching("bad argument #1 to 'PriorityQueue'", tide.PriorityQueue, true)
    end)

    it("the error points at the caller's line", function()
      local ok, e = pcall(function() return tide.Queue("x") end)
      assert.is_false(ok)
      assert.is_truthy(e:find("queue_spec.lua:", 1, true), e)
    end)

    it("methods called with '.' instead of ':' raise bad argument #1", function()
      local q = tide.Queue()
      raises_matching("bad argument #1 to 'get'", q.get)
      raises_matching("bad argument #1 to 'put'", q.put, "x")
      raises_matching("bad argument #1 to 'get_nowait'", q.get_nowait)
      raises_matching("bad argument #1 to 'put_nowait'", q.put_nowait, 1)
    end)
  end)
end)

describe("tide.LifoQueue", function()
  describe(":get()", function()
    it("returns the last item put first", function()
      local q = tide.LifoQueue()
      for _, v in ipairs { "a", "b", "c" } do q:put(v) end
      assert.same({ "c", "b", "a", n = 3 }, drain(q))
    end)

    it("keeps LIFO order when puts and gets interleave", function()
      local q = tide.LifoQueue()
      q:put(1); q:put(2)
      assert.equals(2, q:get())
      q:put(3)
      assert.same({ 3, 1, n = 2 }, drain(q))
    end)

    it("nil is a valid item", function()
      local q = tide.LifoQueue()
      q:put("a"); q:put(nil); q:put("c")
      assert.equals(3, q:qsize())
      assert.equals("c", q:get())
      assert.is_nil(q:get())
      assert.equals("a", q:get())
      assert.is_true(q:empty())
    end)

    it("blocks when empty and gets a later put", function()
      local q = tide.LifoQueue()
      local t = tide.spawn(function() return q:get() end)
      turns()
      assert.is_false(t:done())
      q:put(5)
      assert.equals(5, await(t))
    end)
  end)

  describe("maxsize", function()
    it("put blocks when full; put_nowait raises queue_full", function()
      local q = tide.LifoQueue(1)
      q:put("a")
      assert.equals("queue_full", (errkind(q.put_nowait, q, "b")))
      local p = tide.spawn(function() q:put("b") end)
      turns()
      assert.is_false(p:done())
      assert.equals("a", q:get())
      await(p)
      assert.equals("b", q:get_nowait())
    end)
  end)
end)

describe("tide.PriorityQueue", function()
  it("refuses, naming the argument, an item '<' cannot compare with the queue's", function()
    local q = tide.PriorityQueue()
    q:put(1)
    raises_matching("bad argument #1 to 'put' (an item comparable with the queue's items with '<' expected, got string where they are number)",
      q.put, q, "a")
    q:put({ 2, "x" })
    raises_matching("got string where they are number", q.put, q, { "a", "y" })
    assert.equals(2, q:qsize())
    assert.equals(1, q:get())
  end)

  describe(":get()", function()
    it("returns the lowest item first", function()
      local q = tide.PriorityQueue()
      for _, v in ipairs { 5, 1, 4, 2, 3 } do q:put(v) end
      assert.same({ 1, 2, 3, 4, 5, n = 5 }, drain(q))
    end)

    it("orders strings with <", function()
      local q = tide.PriorityQueue()
      for _, v in ipairs { "pear", "apple", "fig" } do q:put(v) end
      assert.same({ "apple", "fig", "pear", n = 3 }, drain(q))
    end)

    it("compares tables by their first element, like (priority, data) tuples", function()
      local q = tide.PriorityQueue()
      q:put({ 3, "c" }); q:put({ 1, "a" }); q:put({ 2, "b" })
      assert.same({ 1, "a" }, q:get())
      assert.same({ 2, "b" }, q:get())
      assert.same({ 3, "c" }, q:get())
    end)

    it("breaks ties on the next elements, as Python tuples do", function()
      local q = tide.PriorityQueue()
      q:put({ 1, "z" }); q:put({ 1, "y" }); q:put({ 1, "y", 2 }); q:put({ 1 }); q:put({ 0, "b" })
      local got = {}
      while not q:empty() do
        local x = q:get()
        got[#got + 1] = table.concat(x, ",")
      end
      assert.same({ "0,b", "1", "1,y", "1,y,2", "1,z" }, got)
    end)

    it("keeps first in, first out when later elements cannot be compared", function()
      local q = tide.PriorityQueue()
      local a, b, c = { 1, {} }, { 1, "s" }, { 1, {} }
      q:put(a); q:put(b); q:put(c)
      assert.equals(a, q:get())
      assert.equals(b, q:get())
      assert.equals(c, q:get())
    end)

    it("returns equal priorities first in, first out", function()
      local q = tide.PriorityQueue()
      q:put({ 2, "b1" }); q:put({ 1, "a1" }); q:put({ 2, "b2" })
      q:put({ 1, "a2" }); q:put({ 2, "b3" }); q:put({ 1, "a3" })
      local got = {}
      while not q:empty() do got[#got + 1] = q:get()[2] end
      assert.same({ "a1", "a2", "a3", "b1", "b2", "b3" }, got)
    end)

    it("is stable over many items with few priorities", function()
      local q = tide.PriorityQueue()
      local items = {}
      local seed = 12345
      for i = 1, 200 do
        seed = (seed * 1103515245 + 12345) % 2147483648
        local item = { seed % 4, i }
        items[i] = item
        q:put(item)
      end
      local expect = {}
      for i = 1, 200 do expect[i] = items[i] end
      table.sort(expect, function(a, b)
        if a[1] ~= b[1] then return a[1] < b[1] end
        return a[2] < b[2]
      end)
      local got = {}
      while not q:empty() do got[#got + 1] = q:get() end
      assert.equals(200, #got)
      for i = 1, 200 do
        assert.equals(expect[i], got[i], "position " .. i)
      end
    end)

    it("uses __lt when a table has one", function()
      local mt = { __lt = function(a, b) return a.rank < b.rank end }
      local function obj(r) return setmetatable({ "ignored-" .. r, rank = r }, mt) end
      local q = tide.PriorityQueue()
      q:put(obj(3)); q:put(obj(1)); q:put(obj(2))
      assert.equals(1, q:get().rank)
      assert.equals(2, q:get().rank)
      assert.equals(3, q:get().rank)
    end)

    it("a blocked getter gets the lowest item of those put before it runs", function()
      local q = tide.PriorityQueue()
      local t = tide.spawn(function() return q:get() end)
      turns()
      q:put(9); q:put(2); q:put(5)
      assert.equals(2, await(t))
      assert.same({ 5, 9, n = 2 }, drain(q))
    end)
  end)

  describe(":put()", function()
    it("raises with the argument position for an item that cannot be compared", function()
      local q = tide.PriorityQueue()
      q:put(1)
      raises_matching("bad argument #1 to 'put'", q.put, q, function() end)
      raises_matching("bad argument #1 to 'put'", q.put, q, {})
      assert.equals(1, q:qsize())
      q:get()
      q:task_done()
      await(function() q:join() end) -- nothing was counted as unfinished
    end)

    it("takes any one item, nil too, when it is empty: the only item compares with nothing (as asyncio's)", function()
      local q = tide.PriorityQueue()
      q:put(nil) -- (it was refused: the issue says nil is a valid item)
      assert.equals(1, q:qsize())
      raises_matching("bad argument #1 to 'put' (priority queue items must be comparable", q.put, q, nil)
      assert.equals(1, q:qsize())
      assert.is_nil(q:get())
      assert.is_true(q:empty())
      q:put(print)
      assert.equals(print, q:get_nowait())
    end)

    it("after a put fails to compare with the queued items, the queue stays consistent", function()
      local q = tide.PriorityQueue()
      q:put(1)
      local ok = pcall(q.put_nowait, q, "a")
      assert.is_false(ok, "comparing a string with a number should fail")
      -- whatever qsize() says must be gettable, and then the queue is empty
      local n = q:qsize()
      local got = {}
      for i = 1, n do
        local ok2, v = pcall(q.get_nowait, q)
        assert.is_true(ok2, ("get_nowait %d of %d failed: %s"):format(i, n, tostring(v)))
        got[#got + 1] = v
      end
      assert.equals(1, got[1])
      assert.is_true(q:empty())
    end)

    it("put blocks when full and put_nowait raises queue_full", function()
      local q = tide.PriorityQueue(2)
      q:put(5); q:put(1)
      assert.equals("queue_full", (errkind(q.put_nowait, q, 3)))
      local p = tide.spawn(function() q:put(0) end)
      turns()
      assert.is_false(p:done())
      assert.equals(1, q:get())
      await(p)
      assert.same({ 0, 5, n = 2 }, drain(q))
    end)
  end)
end)

-- The shared behaviour, checked for each kind of queue.
for _, k in ipairs(KINDS) do
  local name, make = k[1], k[2]
  describe(name .. " (common)", function()
    describe(":shutdown()", function()
      it("drains then raises, and immediate empties the queue", function()
        local q = make()
        q:put(1); q:put(2)
        q:shutdown()
        assert.equals("queue_shutdown", (errkind(q.put, q, 3)))
        q:get()
        q:get()
        assert.equals("queue_shutdown", (errkind(q.get, q)))
        local q2 = make()
        q2:put(1); q2:put(2)
        q2:shutdown(true)
        assert.equals(0, q2:qsize())
        await(function() q2:join() end)
      end)
    end)

    describe("cancellation", function()
      it("a getter woken and cancelled in the same turn passes the item on", function()
        local q = make()
        local g1 = tide.spawn(function() return q:get() end)
        local g2 = tide.spawn(function() return q:get() end)
        turns()
        q:put(42)
        g1:cancel()
        assert.equals(42, await(g2))
        assert.is_true(g1:cancelled())
      end)
    end)

    describe(":task_done()", function()
      it("join waits for task_done of each item", function()
        local q = make()
        q:put(1); q:put(2)
        local j = tide.spawn(function() q:join() end)
        q:get(); q:task_done()
        turns()
        assert.is_false(j:done())
        q:get(); q:task_done()
        await(j)
        assert.equals("invalid_state", (errkind(q.task_done, q)))
      end)
    end)
  end)
end
