-- tide.queue: Queue, PriorityQueue and LifoQueue with asyncio's semantics
-- (put/get suspend, *_nowait raise, task_done/join, shutdown). nil is a
-- valid item. A cancelled get or put takes or leaves nothing: the item
-- stays for the next getter, and a wake it received is passed on.
local core = require "tide.core"
local Waiters = require "tide.waiters"
local terror = core.error

local M = {}

local Queue = {}
Queue.__index = Queue
Queue.__name = "tide.Queue"

local function check_self(self, fname)
  if getmetatable(self) == nil or type(self) ~= "table" or self._items == nil then
    error(("bad argument #1 to '%s' (queue expected, got %s; use q:%s, not q.%s)"):format(
      fname, type(self), fname, fname), 3)
  end
end

local function new(mt, maxsize, fname)
  if maxsize == nil then
    maxsize = 0
  elseif math.type(maxsize) ~= "integer" and not (type(maxsize) == "number" and maxsize == math.floor(maxsize)) then
    error(("bad argument #1 to '%s' (integer maxsize expected, got %s)"):format(
      fname, math.type(maxsize) or type(maxsize)), 3)
  end
  return setmetatable({
    maxsize = math.tointeger(maxsize) or 0,
    _items = {}, _first = 1, _n = 0, _seq = 0,
    _getters = Waiters.new(), _putters = Waiters.new(), _joiners = Waiters.new(),
    _unfinished = 0, _shutdown = false,
  }, mt)
end

-- FIFO storage: a ring of indices, so nil items keep their place.
function Queue:_put(item)
  self._items[self._first + self._n] = item
  self._n = self._n + 1
end

function Queue:_get()
  local i = self._first
  local item = self._items[i]
  self._items[i] = nil
  self._first = i + 1
  self._n = self._n - 1
  return item
end

function Queue:qsize() return self._n end
function Queue:empty() return self._n == 0 end
function Queue:full() return self.maxsize > 0 and self._n >= self.maxsize end

local function shut_error()
  return terror("queue_shutdown", "the queue is shut down")
end

function Queue:put_nowait(item)
  check_self(self, "put_nowait")
  if self._shutdown then error(shut_error(), 2) end
  if self:full() then
    error(terror("queue_full", ("queue is full (maxsize %d)"):format(self.maxsize)), 2)
  end
  self:_put(item)
  self._unfinished = self._unfinished + 1
  self._getters:wake_one()
end

function Queue:put(item)
  check_self(self, "put")
  while self:full() do
    if self._shutdown then error(shut_error(), 2) end
    local ok, err, woken = self._putters:wait("Queue:put")
    if not ok then
      if woken and not self:full() then self._putters:wake_one() end
      error(err, 0)
    end
  end
  return self:put_nowait(item)
end

function Queue:get_nowait()
  check_self(self, "get_nowait")
  if self._n == 0 then
    if self._shutdown then error(shut_error(), 2) end
    error(terror("queue_empty", "queue is empty"), 2)
  end
  local item = self:_get()
  self._putters:wake_one()
  return item
end

function Queue:get()
  check_self(self, "get")
  while self._n == 0 do
    if self._shutdown then error(shut_error(), 2) end
    local ok, err, woken = self._getters:wait("Queue:get")
    if not ok then
      if woken and self._n > 0 then self._getters:wake_one() end
      error(err, 0)
    end
  end
  return self:get_nowait()
end

function Queue:task_done()
  check_self(self, "task_done")
  if self._unfinished <= 0 then
    error(terror("invalid_state", "task_done() called more times than items were put"), 2)
  end
  self._unfinished = self._unfinished - 1
  if self._unfinished == 0 then self._joiners:wake_all() end
end

function Queue:join()
  check_self(self, "join")
  while self._unfinished > 0 do
    local ok, err = self._joiners:wait("Queue:join")
    if not ok then error(err, 0) end
  end
end

-- q:shutdown([immediate]): put raises "queue_shutdown" from now on; get
-- does once the queue is empty. immediate drops the items left (counting
-- them as done for join). Every blocked put, get and join wakes up.
function Queue:shutdown(immediate)
  check_self(self, "shutdown")
  self._shutdown = true
  if immediate then
    while self._n > 0 do
      self:_get()
      if self._unfinished > 0 then self._unfinished = self._unfinished - 1 end
    end
    if self._unfinished == 0 then self._joiners:wake_all() end
  end
  self._getters:wake_all()
  self._putters:wake_all()
end

function Queue:__tostring()
  return ("%s(maxsize=%d, qsize=%d%s)"):format(getmetatable(self).__name, self.maxsize,
    self._n, self._shutdown and ", shut down" or "")
end

-- LIFO storage
local LifoQueue = setmetatable({}, { __index = Queue })
LifoQueue.__index = LifoQueue
LifoQueue.__name = "tide.LifoQueue"
LifoQueue.__tostring = Queue.__tostring

function LifoQueue:_put(item)
  self._n = self._n + 1
  self._items[self._n] = item
end

function LifoQueue:_get()
  local item = self._items[self._n]
  self._items[self._n] = nil
  self._n = self._n - 1
  return item
end

-- Priority storage: a binary heap; ties leave in insertion order. Tables
-- without __lt compare by their first element, as Python compares tuples.
local PriorityQueue = setmetatable({}, { __index = Queue })
PriorityQueue.__index = PriorityQueue
PriorityQueue.__name = "tide.PriorityQueue"
PriorityQueue.__tostring = Queue.__tostring

local function key(item)
  if type(item) == "table" then
    local mt = getmetatable(item)
    if not (mt and mt.__lt) then return item[1] end
  end
  return item
end

local function before(a, b)
  local ka, kb = key(a.item), key(b.item)
  if ka == kb or not (ka < kb or kb < ka) then
    return a.seq < b.seq
  end
  return ka < kb
end

local function check_comparable(item)
  local k = key(item)
  local ok = pcall(function() return k < k end)
  if not ok then
    error(("bad argument #1 to 'put' (priority queue items must be comparable with " ..
      "'<', or tables whose first element is; got %s)"):format(type(k)), 4)
  end
end

function PriorityQueue:_put(item)
  check_comparable(item)
  local h = self._items
  self._seq = self._seq + 1
  local node = { item = item, seq = self._seq }
  local i = self._n + 1
  self._n = i
  while i > 1 do
    local p = i // 2
    if not before(node, h[p]) then break end
    h[i] = h[p]
    i = p
  end
  h[i] = node
end

function PriorityQueue:_get()
  local h, n = self._items, self._n
  local top, last = h[1], h[n]
  h[n] = nil
  n = n - 1
  self._n = n
  if n > 0 then
    local i = 1
    while true do
      local c = 2 * i
      if c > n then break end
      if c < n and before(h[c + 1], h[c]) then c = c + 1 end
      if not before(h[c], last) then break end
      h[i] = h[c]
      i = c
    end
    h[i] = last
  end
  return top.item
end

function M.Queue(maxsize) return new(Queue, maxsize, "Queue") end
function M.LifoQueue(maxsize) return new(LifoQueue, maxsize, "LifoQueue") end
function M.PriorityQueue(maxsize) return new(PriorityQueue, maxsize, "PriorityQueue") end

return M
