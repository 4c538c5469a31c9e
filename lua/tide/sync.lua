-- tide.sync: Semaphore, BoundedSemaphore, Lock, Event, Condition and Barrier.
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
  if getmetatable(self) ~= Guard then
    error("bad argument #1 to 'release' (tide.Guard expected; call it as guard:release())", 2)
  end
  if not self.released then
    self.released = true
    self.owner:release()
  end
end
Guard.__close = Guard.release

-- A method called with '.' instead of ':', or on the wrong object, gets a
-- luaL-style message naming the method and the expected type.
local function own(self, fname, class)
  local mt = getmetatable(self)
  if mt ~= class and not (mt and mt.__base == class) then
    local got = type(mt) == "table" and type(mt.__name) == "string" and mt.__name or type(self)
    error(("bad argument #1 to '%s' (%s expected, got %s; call it as obj:%s(...))")
      :format(fname, class.__name, got, fname), 3)
  end
end

-- Blocking methods check they run in a task before changing any state
-- (Condition:wait must not give its lock away, then fail).
local need_task = core.need_task

-- Counts: integers, or floats with an integral value (10.0, as `/` makes).
local function count_arg(v, fname, what)
  local n = math.tointeger(v)
  if n == nil or n < 0 then
    error(("bad argument #1 to '%s' (non-negative integer %s expected, got %s)"):format(
      fname, what, math.type(v) and tostring(v) or type(v)), 3)
  end
  return n
end

-- Semaphore ------------------------------------------------------------

local Semaphore = {}
Semaphore.__index = Semaphore
Semaphore.__name = "tide.Semaphore"

local function new_semaphore(mt, value, bound, fname)
  if value == nil then value = 1 end
  value = count_arg(value, fname, "value")
  return setmetatable({ _value = value, _bound = bound and value, _waiters = waitlist(),
    _woken = 0 }, mt)
end

-- A permit released while tasks wait goes to the first of them (_woken
-- counts those not yet run): as asyncio's, a newcomer queues behind them
-- (no barging) and locked() is true meanwhile.
function Semaphore:locked()
  own(self, "locked", Semaphore)
  return self._value == 0 or self._woken > 0 or not self._waiters:empty()
end

function Semaphore:acquire()
  own(self, "acquire", Semaphore)
  if self._value > 0 and self._woken == 0 and self._waiters:empty() then
    self._value = self._value - 1
  else
    need_task("acquire")
    local ok, err, woken = self._waiters:wait()
    if ok or woken then self._woken = self._woken - 1 end
    if woken and not ok then self._value = self._value + 1 end -- ours: passed on below
    -- permits released meanwhile go to the tasks that queued behind (as
    -- asyncio's acquire does on its way out)
    while self._value > 0 and self._waiters:wake_one() do
      self._value = self._value - 1
      self._woken = self._woken + 1
    end
    if not ok then error(err, 0) end
  end
  return setmetatable({ owner = self }, Guard)
end

-- Gives one permit to the first waiter that can take it, or keeps it.
function Semaphore:_pass()
  if self._waiters:wake_one() then
    self._woken = self._woken + 1
  else
    self._value = self._value + 1
  end
end

function Semaphore:release()
  own(self, "release", Semaphore)
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
BoundedSemaphore.__base = Semaphore

-- Lock: asyncio's. release() unlocks and wakes the first waiter, which
-- takes the lock when it runs; until then locked() is false, a second
-- release() is an error, and a newcomer queues behind the woken waiter
-- (no barging). A waiter cancelled before it runs (woken or not) wakes the
-- first of the others if the lock is free, as asyncio's.
local Lock = {}
Lock.__index = Lock
Lock.__name = "tide.Lock"

function Lock:locked()
  own(self, "locked", Lock)
  return self._locked
end

-- asyncio's _wake_up_first: the first waiter only, and only if nothing is
-- on its way to it: a wake (it takes the lock when it runs), or its
-- cancellation (it passes the lock on when it runs, below).
function Lock:_wake_first()
  if self._woken > 0 or self._waiters:head_leaving() then return end
  if self._waiters:wake_one() then self._woken = self._woken + 1 end
end

function Lock:acquire()
  own(self, "acquire", Lock)
  if not self._locked and self._woken == 0 and self._waiters:empty() then
    self._locked = true
  else
    need_task("acquire")
    local ok, err, woken = self._waiters:wait()
    if ok or woken then self._woken = self._woken - 1 end
    if not ok then
      if not self._locked then self:_wake_first() end -- as asyncio's acquire
      error(err, 0)
    end
    self._locked = true
  end
  return setmetatable({ owner = self }, Guard)
end

function Lock:release()
  own(self, "release", Lock)
  if not self._locked then
    error(terror("invalid_state", "Lock:release() on a lock that is not held"), 2)
  end
  self._locked = false
  self:_wake_first()
end

function Lock:__tostring()
  return ("tide.Lock(%s)"):format(self._locked and "locked" or "unlocked")
end

function M.Semaphore(n) return new_semaphore(Semaphore, n, false, "Semaphore") end
function M.BoundedSemaphore(n) return new_semaphore(BoundedSemaphore, n, true, "BoundedSemaphore") end
function M.Lock()
  return setmetatable({ _locked = false, _woken = 0, _waiters = waitlist() }, Lock)
end

-- Event ----------------------------------------------------------------

local Event = {}
Event.__index = Event
Event.__name = "tide.Event"

function Event:is_set()
  own(self, "is_set", Event)
  return self._set
end

function Event:set()
  own(self, "set", Event)
  if not self._set then
    self._set = true
    self._waiters:wake_all()
  end
end

function Event:clear()
  own(self, "clear", Event)
  self._set = false
end

function Event:wait()
  own(self, "wait", Event)
  if self._set then return true end
  need_task("wait")
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

function Condition:acquire()
  own(self, "acquire", Condition)
  return self._lock:acquire()
end
function Condition:release()
  own(self, "release", Condition)
  return self._lock:release()
end
function Condition:locked()
  own(self, "locked", Condition)
  return self._lock:locked()
end

local function not_held(fname)
  error(terror("invalid_state", ("Condition:%s() needs the lock held"):format(fname)), 3)
end

-- Releases the lock, waits for a notify, re-acquires the lock (also when
-- cancelled, as asyncio does) and returns true.
function Condition:wait()
  own(self, "wait", Condition)
  need_task("wait")
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
  own(self, "wait_for", Condition)
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
  own(self, "notify", Condition)
  if n ~= nil then n = count_arg(n, "notify", "count") end
  if not self._lock:locked() then not_held("notify") end
  n = n or 1
  for _ = 1, n do
    if not self._waiters:wake_one() then break end
  end
end

function Condition:notify_all()
  own(self, "notify_all", Condition)
  if not self._lock:locked() then not_held("notify_all") end
  self._waiters:wake_all()
end

function M.Condition(lock)
  if lock ~= nil and getmetatable(lock) ~= Lock then
    local mt = getmetatable(lock)
    error(("bad argument #1 to 'Condition' (tide.Lock expected, got %s)"):format(
      type(mt) == "table" and type(mt.__name) == "string" and mt.__name or type(lock)), 2)
  end
  return setmetatable({ _lock = lock or M.Lock(), _waiters = waitlist() }, Condition)
end

-- Barrier ----------------------------------------------------------------
-- asyncio's (3.11): parties tasks wait() until the last arrives; all go on
-- at once, each with its arrival number (0 .. parties - 1), and the barrier
-- fills again. reset() breaks the wait of those in it (kind
-- "broken_barrier") and leaves it usable; abort() breaks it for good. Built
-- on a Condition, as asyncio's: FILLING, then DRAINING while the released
-- leave (newcomers wait for that), RESETTING, BROKEN.

local Barrier = {}
Barrier.__index = function(self, k)
  if k == "n_waiting" then return self._state == "filling" and self._count or 0 end
  if k == "broken" then return self._state == "broken" end
  return Barrier[k]
end
Barrier.__name = "tide.Barrier"

local function broken_error()
  return terror("broken_barrier", "the barrier is broken (reset or aborted)")
end

-- Leaving wait() (released, broken or cancelled): the last one out of a
-- draining or resetting barrier fills it again.
function Barrier:_exit()
  if self._count == 0 and (self._state == "resetting" or self._state == "draining") then
    self._state = "filling"
  end
  self._cond:notify_all()
end

function Barrier:wait()
  own(self, "wait", Barrier)
  need_task("wait")
  local g <close> = self._cond:acquire()
  while self._state == "draining" or self._state == "resetting" do self._cond:wait() end
  if self._state == "broken" then error(broken_error(), 2) end
  local index = self._count
  self._count = index + 1
  local ok, err = pcall(function()
    if index + 1 == self.parties then
      self._state = "draining" -- the last one releases the others
      self._cond:notify_all()
    else
      while self._state == "filling" do self._cond:wait() end
      if self._state == "broken" or self._state == "resetting" then error(broken_error(), 0) end
    end
  end)
  self._count = self._count - 1
  self:_exit()
  if not ok then error(err, 0) end
  return index
end

-- Moves the barrier to state and wakes every waiter to look at it.
function Barrier:_become(state)
  local g <close> = self._cond:acquire()
  self._state = state
  self._cond:notify_all()
end

-- reset(): waiters get kind "broken_barrier"; the barrier is usable again.
function Barrier:reset()
  own(self, "reset", Barrier)
  self:_become(self._count > 0 and "resetting" or "filling")
end

-- abort(): broken for good; every wait(), now or later, fails.
function Barrier:abort()
  own(self, "abort", Barrier)
  self:_become("broken")
end

function Barrier:__tostring()
  return ("tide.Barrier(%s, waiters:%d/%d)"):format(self._state, self.n_waiting, self.parties)
end

function M.Barrier(parties)
  local n = math.tointeger(parties)
  if n == nil or n < 1 then
    error(("bad argument #1 to 'Barrier' (positive integer parties expected, got %s)"):format(
      math.type(parties) and tostring(parties) or type(parties)), 2)
  end
  return setmetatable({ parties = n, _count = 0, _state = "filling", _cond = M.Condition() }, Barrier)
end

return M
