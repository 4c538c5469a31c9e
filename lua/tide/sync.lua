-- tide.sync: Semaphore, BoundedSemaphore, Lock, Event and Condition.
-- Permits are handed over in FIFO order (a release wakes the first waiter
-- with the permit already its own, so a newcomer cannot barge in). A waiter
-- cancelled after the hand-over passes the permit on: no permit leaks.
-- acquire() returns a guard for `local g <close> = sem:acquire()`.
local core = require "tide.core"
local waitlist = core.waitlist
local terror = core.error

local M = {}

local Guard = {}
Guard.__index = Guard
Guard.__name = "tide.Guard"

function Guard:release()
  if not self.released then
    self.released = true
    self.owner:release()
  end
end
Guard.__close = Guard.release

-- Methods called with '.' instead of ':' get a luaL-style message.
local function own(self, fname)
  if type(self) ~= "table" or self._waiters == nil then
    error(("bad argument #1 to '%s' (tide synchronisation object expected, got %s;"
      .. " call it as obj:%s(...))"):format(fname, type(self), fname), 3)
  end
end

-- Semaphore ------------------------------------------------------------

local Semaphore = {}
Semaphore.__index = Semaphore
Semaphore.__name = "tide.Semaphore"

local function new_semaphore(mt, value, bound, fname)
  if value == nil then value = 1 end
  if math.type(value) ~= "integer" or value < 0 then
    error(("bad argument #1 to '%s' (non-negative integer expected, got %s)"):format(
      fname, math.type(value) and tostring(value) or type(value)), 3)
  end
  return setmetatable({ _value = value, _bound = bound and value, _waiters = waitlist() }, mt)
end

function Semaphore:locked()
  own(self, "locked")
  return self._value == 0
end

function Semaphore:acquire()
  own(self, "acquire")
  if self._value > 0 and self._waiters:empty() then
    self._value = self._value - 1
  else
    local ok, err, woken = self._waiters:wait()
    if not ok then
      if woken then self:_pass() end -- the permit was ours: pass it on
      error(err, 0)
    end
  end
  return setmetatable({ owner = self }, Guard)
end

-- Gives one permit to the first waiter that can take it, or keeps it.
function Semaphore:_pass()
  if not self._waiters:wake_one() then
    self._value = self._value + 1
  end
end

function Semaphore:release()
  own(self, "release")
  if self._bound and self._value >= self._bound then
    error(terror("invalid_state", ("%s released too many times"):format(
      getmetatable(self).__name)), 2)
  end
  self:_pass()
end

function Semaphore:__tostring()
  return ("%s(value=%d)"):format(getmetatable(self).__name, self._value)
end

local BoundedSemaphore = setmetatable({}, { __index = Semaphore })
BoundedSemaphore.__index = BoundedSemaphore
BoundedSemaphore.__name = "tide.BoundedSemaphore"
BoundedSemaphore.__tostring = Semaphore.__tostring

local Lock = setmetatable({}, { __index = Semaphore })
Lock.__index = Lock
Lock.__name = "tide.Lock"

function Lock:release()
  own(self, "release")
  if self._value >= 1 then
    error(terror("invalid_state", "Lock:release() on a lock that is not held"), 2)
  end
  self:_pass()
end

function Lock:__tostring()
  return ("tide.Lock(%s)"):format(self._value == 0 and "locked" or "unlocked")
end

function M.Semaphore(n) return new_semaphore(Semaphore, n, false, "Semaphore") end
function M.BoundedSemaphore(n) return new_semaphore(BoundedSemaphore, n, true, "BoundedSemaphore") end
function M.Lock() return new_semaphore(Lock, 1, true, "Lock") end

-- Event ----------------------------------------------------------------

local Event = {}
Event.__index = Event
Event.__name = "tide.Event"

function Event:is_set()
  own(self, "is_set")
  return self._set
end

function Event:set()
  own(self, "set")
  if not self._set then
    self._set = true
    self._waiters:wake_all()
  end
end

function Event:clear()
  own(self, "clear")
  self._set = false
end

function Event:wait()
  own(self, "wait")
  if self._set then return true end
  local ok, err = self._waiters:wait()
  if not ok then error(err, 0) end
  return true
end

function Event:__tostring()
  return ("tide.Event(%s)"):format(self._set and "set" or "unset")
end

function M.Event()
  return setmetatable({ _set = false, _waiters = waitlist() }, Event)
end

-- Condition --------------------------------------------------------------

local Condition = {}
Condition.__index = Condition
Condition.__name = "tide.Condition"

function Condition:acquire() return self._lock:acquire() end
function Condition:release() return self._lock:release() end
function Condition:locked() return self._lock:locked() end

local function not_held(fname)
  error(terror("invalid_state", ("Condition:%s() needs the lock held"):format(fname)), 3)
end

-- Releases the lock, waits for a notify, re-acquires the lock (also when
-- cancelled, as asyncio does) and returns true.
function Condition:wait()
  own(self, "wait")
  if not self._lock:locked() then not_held("wait") end
  self._lock:release()
  local ok, err, woken = self._waiters:wait()
  if not ok and woken then self._waiters:wake_one() end
  local cancel = not ok and err or nil
  while true do
    local got, e = pcall(self._lock.acquire, self._lock)
    if got then break end
    cancel = cancel or e
  end
  if cancel then error(cancel, 0) end
  return true
end

function Condition:wait_for(pred)
  own(self, "wait_for")
  if type(pred) ~= "function" then
    error(("bad argument #1 to 'wait_for' (function expected, got %s)"):format(type(pred)), 2)
  end
  local r = pred()
  while not r do
    self:wait()
    r = pred()
  end
  return r
end

function Condition:notify(n)
  own(self, "notify")
  if not self._lock:locked() then not_held("notify") end
  n = n or 1
  for _ = 1, n do
    if not self._waiters:wake_one() then break end
  end
end

function Condition:notify_all()
  own(self, "notify_all")
  if not self._lock:locked() then not_held("notify_all") end
  self._waiters:wake_all()
end

function M.Condition(lock)
  if lock ~= nil and getmetatable(lock) ~= Lock then
    error(("bad argument #1 to 'Condition' (tide.Lock expected, got %s)"):format(type(lock)), 2)
  end
  return setmetatable({ _lock = lock or M.Lock(), _waiters = waitlist() }, Condition)
end

return M
