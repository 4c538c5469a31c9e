-- tide.waiters: a FIFO list of parked tasks, the one shape every queue and
-- lock here waits on. wake_one hands a wake to the first waiter that can
-- still take it (a waiter whose cancellation is already on its way cannot,
-- and will remove itself), so no wake is lost and order is fair.
local core = require "tide.core"
local wake, park, current_task = core.wake, core.park, core.current_task

local W = {}
W.__index = W

function W.new()
  return setmetatable({ first = 1, last = 0 }, W)
end

function W:push(t)
  local last = self.last + 1
  self.last = last
  self[last] = t
end

function W:remove(t)
  for i = self.first, self.last do
    if self[i] == t then
      self[i] = false
      return true
    end
  end
  return false
end

function W:empty()
  while self.first <= self.last and not self[self.first] do
    self[self.first] = nil
    self.first = self.first + 1
  end
  return self.first > self.last
end

-- Wakes the first waiter still able to take it; returns whether one was.
function W:wake_one(...)
  while not self:empty() do
    local t = self[self.first]
    self[self.first] = nil
    self.first = self.first + 1
    if wake(t, ...) then
      return true
    end
  end
  return false
end

function W:wake_all(...)
  local n = 0
  while self:wake_one(...) do n = n + 1 end
  return n
end

-- Parks the current task in this list. Returns true when woken; when
-- cancelled returns false, err, woken (already removed from the list).
function W:wait(fname)
  local t = current_task()
  if not t then
    error(fname .. " must be called from inside a task", 3)
  end
  self:push(t)
  local ok, err, woken = park()
  if ok then
    return true
  end
  self:remove(t)
  return false, err, woken
end

return W
