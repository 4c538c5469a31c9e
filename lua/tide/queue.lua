-- tide.queue: Queue, PriorityQueue and LifoQueue with asyncio's semantics
-- (put/get suspend, *_nowait raise, task_done/join, shutdown). nil is a
-- valid item. A cancelled get or put takes or leaves nothing: the item
-- stays for the next getter, and a wake it received is passed on.
local core = require "tide.core"
local waitlist = core.waitlist
local terror = core.error

local M = {}

local Queue = {}
Queue.__index = Queue
Queue.__name = "tide.Queue"

local function badself(fname)
  error(("bad argument #1 to '%s' (queue expected; call it as q:%s(...))"):format(
    fname, fname), 3)
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
    _getters = waitlist(), _putters = waitlist(), _joiners = waitlist(),
    _unfinished = 0, _shutdown = false,
  }, mt)
end

local function shut_error()
  return terror("queue_shutdown", "the queue is shut down")
end

local Queue = {}
Queue.__index = Queue
Queue.__name = "tide.Queue"

function Queue:qsize() return self._n end
function Queue:empty() return self._n == 0 end
function Queue:full() return self.maxsize > 0 and self._n >= self.maxsize end

function Queue:__tostring()
  return ("%s(maxsize=%d, qsize=%d%s)"):format(getmetatable(self).__name, self.maxsize,
    self._n, self._shutdown and ", shut down" or "")
end

function Queue:task_done()
  if type(self) ~= "table" or self._items == nil then badself("task_done") end
  if self._unfinished <= 0 then
    error(terror("invalid_state", "task_done() called more times than items were put"), 2)
  end
  self._unfinished = self._unfinished - 1
  if self._unfinished == 0 then self._joiners:wake_all() end
end

function Queue:join()
  if type(self) ~= "table" or self._items == nil then badself("join") end
  while self._unfinished > 0 do
    local ok, err = self._joiners:wait()
    if not ok then error(err, 0) end
  end
end

-- Gives every class its put/get from its storage's push and pop, so the
-- hot path is a few table operations and no method look-ups.
local function define(cls, push, pop)
  -- Stores an item (the queue has room and is not shut down).
  local function insert(self, item)
    push(self, item)
    self._unfinished = self._unfinished + 1
    self._getters:wake_one()
  end

  local function take(self)
    local item = pop(self)
    self._putters:wake_one()
    return item
  end

  function cls:put_nowait(item)
    if type(self) ~= "table" or self._items == nil then badself("put_nowait") end
    if self._shutdown then error(shut_error(), 2) end
    if self.maxsize > 0 and self._n >= self.maxsize then
      error(terror("queue_full", ("queue is full (maxsize %d)"):format(self.maxsize)), 2)
    end
    insert(self, item)
  end

  function cls:put(item)
    if type(self) ~= "table" or self._items == nil then badself("put") end
    local max = self.maxsize
    while max > 0 and self._n >= max and not self._shutdown do
      local ok, err, woken = self._putters:wait()
      if not ok then
        if woken and self._n < max then self._putters:wake_one() end
        error(err, 0)
      end
    end
    if self._shutdown then error(shut_error(), 2) end
    insert(self, item)
  end

  function cls:get_nowait()
    if type(self) ~= "table" or self._items == nil then badself("get_nowait") end
    if self._n == 0 then
      if self._shutdown then error(shut_error(), 2) end
      error(terror("queue_empty", "queue is empty"), 2)
    end
    return take(self)
  end

  function cls:get()
    if type(self) ~= "table" or self._items == nil then badself("get") end
    while self._n == 0 do
      if self._shutdown then error(shut_error(), 2) end
      local ok, err, woken = self._getters:wait()
      if not ok then
        if woken and self._n > 0 then self._getters:wake_one() end
        error(err, 0)
      end
    end
    return take(self)
  end

  -- q:shutdown([immediate]): put raises "queue_shutdown" from now on; get
  -- does once the queue is empty. immediate drops the items left (counting
  -- them as done for join). Every blocked put, get and join wakes up.
  function cls:shutdown(immediate)
    if type(self) ~= "table" or self._items == nil then badself("shutdown") end
    self._shutdown = true
    if immediate then
      while self._n > 0 do
        pop(self)
        if self._unfinished > 0 then self._unfinished = self._unfinished - 1 end
      end
      if self._unfinished == 0 then self._joiners:wake_all() end
    end
    self._getters:wake_all()
    self._putters:wake_all()
  end
end

-- FIFO storage: a ring of indices, so nil items keep their place.
define(Queue, function(self, item)
  self._items[self._first + self._n] = item
  self._n = self._n + 1
end, function(self)
  local i = self._first
  local items = self._items
  local item = items[i]
  items[i] = nil
  self._first = i + 1
  self._n = self._n - 1
  return item
end)

-- LIFO storage
local LifoQueue = setmetatable({}, { __index = Queue })
LifoQueue.__index = LifoQueue
LifoQueue.__name = "tide.LifoQueue"
LifoQueue.__tostring = Queue.__tostring

define(LifoQueue, function(self, item)
  self._n = self._n + 1
  self._items[self._n] = item
end, function(self)
  local item = self._items[self._n]
  self._items[self._n] = nil
  self._n = self._n - 1
  return item
end)

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
      "'<', or tables whose first element is; got %s)"):format(type(k)), 5)
  end
end

define(PriorityQueue, function(self, item)
  check_comparable(item)
  local h = self._items
  self._seq = self._seq + 1
  local node = { item = item, seq = self._seq }
  -- Find the slot first: a comparison that raises (say a string among
  -- numbers) then leaves the heap as it was.
  local n = self._n + 1
  local i = n
  while i > 1 and before(node, h[i // 2]) do
    i = i // 2
  end
  local j = n
  while j > i do
    h[j] = h[j // 2]
    j = j // 2
  end
  h[i] = node
  self._n = n
end, function(self)
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
end)

function M.Queue(maxsize) return new(Queue, maxsize, "Queue") end
function M.LifoQueue(maxsize) return new(LifoQueue, maxsize, "LifoQueue") end
function M.PriorityQueue(maxsize) return new(PriorityQueue, maxsize, "PriorityQueue") end

return M
