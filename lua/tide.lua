-- tide: asyncio-style tasks for Lua 5.4. The scheduler, tasks, timers and
-- errors are C (tide.core); this module adds what is built from them:
-- gather, wait, as_completed, task groups, wait_for, timeout and shield,
-- and re-exports the queues and synchronisation primitives.
local core = require "tide.core"
require "tide.coroutine"

local M = {}

for _, name in ipairs { "run", "spawn", "sleep", "time", "call_soon",
  "call_later", "current_task", "all_tasks", "error",
  "iserror" } do
  M[name] = core[name]
end

local spawn, park, wake = core.spawn, core.park, core.wake
-- tide's own callbacks (wakers, deadlines) run as the runtime's work, not
-- under an embedded script's memory and instruction limits: a wait must
-- end even when the script is out of memory (host/timer.c)
local runtime = core.runtime_callback
runtime(wake)
local istask, call_later, current_task = core.istask, core.call_later, core.current_task
local gather_wait = core.gather_wait
local terror, iserror = core.error, core.iserror
local pack, unpack, select, type = table.pack, table.unpack, select, type

M.istask = istask

local function typename(v)
  local mt = getmetatable(v)
  if type(mt) == "table" and type(mt.__name) == "string" then
    return mt.__name
  end
  return type(v)
end

-- Errors about arguments are located at the user's call, whatever the
-- depth inside this module (and in a tail call, at its caller, as Lua's).
local raise_at_user = core.raise_at_user

local function argerror(fname, i, expected, v)
  core.argerror(fname, i, ("%s expected, got %s"):format(expected, typename(v)))
end

local badarg = core.argerror

-- opts must be nil or a table of the options named in known (a typo is
-- an error, not a silent default).
local function check_opts(fname, i, opts, known)
  if opts == nil then return end
  if type(opts) ~= "table" then argerror(fname, i, "table of options", opts) end
  for k in pairs(opts) do
    if not known[k] then badarg(fname, i, ("unknown option '%s'"):format(tostring(k))) end
  end
end

-- A duration: a number that is not NaN; named `what` (say "opts.timeout")
-- when it is an option, which may be nil.
local function check_seconds(fname, i, v, what)
  if what and v == nil then return end
  if type(v) ~= "number" then
    argerror(fname, i, what and what .. " as a number" or "number of seconds", v)
  end
  if v ~= v then badarg(fname, i, (what or "seconds") .. " is NaN") end
end

local need_task = core.need_task

local function me(fname)
  need_task(fname)
  return current_task()
end

-- A done callback that wakes task self from the park it is about to enter,
-- and its disarm: one already scheduled when removed still runs (as
-- asyncio's), and must not wake the task from a later park (a later
-- wait_for would time out at once). fn(t), if given, runs first and says
-- whether to wake.
local function waker(self, fn)
  local armed = true
  return runtime(function(t)
    if armed and (fn == nil or fn(t)) then wake(self) end
  end), function() armed = false end
end

-- tasks without the repeats (asyncio's wait and as_completed take a set)
local function unique(tasks)
  local seen, out = {}, {}
  for _, t in ipairs(tasks) do
    if not seen[t] then seen[t] = true; out[#out + 1] = t end
  end
  return out
end

-- Turns a list of tasks or functions into tasks (functions are spawned).
local function to_tasks(list, n, fname, argbase)
  for i = 1, n do
    local v = list[i]
    if type(v) ~= "function" and not istask(v) then
      argerror(fname, argbase + i - 1, "task or function", v)
    end
  end
  local tasks = {}
  for i = 1, n do
    local v = list[i]
    tasks[i] = type(v) == "function" and spawn(v) or v
  end
  return tasks
end

-- Waits until task t is done, without raising its error. Returns the
-- cancellation error if the waiting task was cancelled meanwhile.
local join = core.join

-- The same through a done callback: one loop turn later, as asyncio's
-- shield, whose outer future is completed by the inner task's callback.
local function join_soon(t)
  if t:done() then return nil end
  local cb, disarm = waker(current_task())
  t:add_done_callback(cb)
  local ok, err = park()
  disarm()
  t:remove_done_callback(cb)
  if not ok then return err end
end

local GATHER_OPTS = { return_exceptions = true }

-- tide.gather(t1, t2, ...) | tide.gather({t1, ...} [, {return_exceptions}])
-- (the checks, spawning of functions and the wait are C: gather_wait)
function M.gather(...)
  local nargs = select("#", ...)
  local first = ...
  need_task("tide.gather")
  if nargs >= 1 and type(first) == "table" and not istask(first) then
    local opts = select(2, ...)
    check_opts("gather", 2, opts, GATHER_OPTS)
    local n = first.n
    if n ~= nil and math.type(n) ~= "integer" then
      if math.type(n) == "float" and n == math.floor(n) then n = math.tointeger(n)
      else argerror("gather", 1, "array of tasks or functions with an integer n", n) end
    end
    return gather_wait(first, n or #first, opts and opts.return_exceptions, true)
  end
  return gather_wait({ ... }, nargs, false)
end

local RETURN_WHEN = { all_completed = true, first_completed = true, first_error = true }
local WAIT_OPTS = { timeout = true, return_when = true }

-- tide.wait(tasks, {timeout =, return_when =}) -> done, pending
function M.wait(tasks, opts)
  if type(tasks) ~= "table" or istask(tasks) then
    argerror("wait", 1, "array of tasks", tasks)
  end
  check_opts("wait", 2, opts, WAIT_OPTS)
  opts = opts or {}
  local timeout, when = opts.timeout, opts.return_when or "all_completed"
  check_seconds("wait", 2, timeout, "opts.timeout")
  if not RETURN_WHEN[when] then
    badarg("wait", 2, ("opts.return_when must be " ..
      "\"all_completed\", \"first_completed\" or \"first_error\", got %q"):format(
      tostring(when)))
  end
  local n = #tasks
  if n == 0 then
    badarg("wait", 1, "the set of tasks is empty")
  end
  tasks = unique(to_tasks(tasks, n, "wait", 1))
  n = #tasks
  local self = me("tide.wait")
  local remaining, satisfied = 0, false
  local function check(t)
    if when == "first_completed" then return true end
    if when == "first_error" and t:failed() then return true end
    return false
  end
  for i = 1, n do
    local t = tasks[i]
    if t:done() then
      satisfied = satisfied or check(t)
    else
      remaining = remaining + 1
    end
  end
  -- always suspends, as asyncio's: with timeout 0 the ready tasks still get
  -- a turn first (a polling loop of wait(ts, {timeout = 0}) must not spin)
  if remaining > 0 and not satisfied then
    local on_done, disarm = waker(self, function(t)
      remaining = remaining - 1
      return remaining == 0 or check(t)
    end)
    for i = 1, n do
      if not tasks[i]:done() then tasks[i]:add_done_callback(on_done) end
    end
    local h = timeout and call_later(timeout, wake, self)
    local ok, err = park()
    disarm()
    if h then h:cancel() end
    for i = 1, n do
      tasks[i]:remove_done_callback(on_done)
    end
    if not ok then error(err, 0) end
  else
    M.sleep(0)
  end
  local done, pending = {}, {}
  for i = 1, n do
    local t = tasks[i]
    if t:done() then done[#done + 1] = t else pending[#pending + 1] = t end
  end
  return done, pending
end

-- for t in tide.as_completed(tasks [, timeout]) do ... end
function M.as_completed(tasks, timeout)
  if type(tasks) ~= "table" or istask(tasks) then
    argerror("as_completed", 1, "array of tasks", tasks)
  end
  check_seconds("as_completed", 2, timeout, "timeout")
  local n = #tasks
  tasks = unique(to_tasks(tasks, n, "as_completed", 1))
  n = #tasks
  local finished, head, tail, remaining, waiter, expired = {}, 1, 0, n, nil, false
  local closed = false
  local on_done = runtime(function(t)
    if expired then return end
    tail = tail + 1
    finished[tail] = t
    if waiter then wake(waiter) end
  end)
  local function unhook()
    expired = true
    for i = 1, n do tasks[i]:remove_done_callback(on_done) end
  end
  -- As asyncio's: the deadline runs from this call, whether or not the
  -- loop is waiting; tasks finishing after it are not yielded.
  local h = timeout and remaining > 0 and call_later(timeout, runtime(function()
    unhook()
    if waiter then wake(waiter) end
  end))
  for i = 1, n do
    if tasks[i]:done() then
      tail = tail + 1
      finished[tail] = tasks[i]
    else
      tasks[i]:add_done_callback(on_done)
    end
  end
  local function take()
    local t = finished[head]
    finished[head] = nil
    head = head + 1
    remaining = remaining - 1
    if remaining == 0 and h then h:cancel() end
    return t
  end
  -- a for loop left early (break, an error, a cancel) leaves nothing on the
  -- tasks still running: the generic for closes its fourth value
  local function stop()
    if remaining > 0 and not expired then
      unhook()
      closed = true
      if h then h:cancel() end
    end
  end
  return function()
    if finished[head] then return take() end
    if remaining == 0 or closed then return nil end
    if not expired then
      waiter = me("tide.as_completed")
      local ok, err = park()
      waiter = nil
      if not ok then error(err, 0) end
      if finished[head] then return take() end
    end
    error(terror("timeout", ("as_completed: %d task(s) not done after %g s"):format(
      remaining, timeout)), 0)
  end, nil, nil, setmetatable({}, { __close = stop })
end

-- Task groups ---------------------------------------------------------

local Group = {}
Group.__index = Group
local SPAWN_OPTS = { name = true }

-- g:spawn([opts,] fn, ...) -> task, a child of the group (opts as tide.spawn's)
function Group:spawn(fn, ...)
  local opts
  if type(fn) == "table" then
    opts, fn = fn, ...
    if type(fn) ~= "function" then
      argerror("spawn", 2, "function", fn)
    end
  elseif type(fn) ~= "function" then
    argerror("spawn", 1, "function or table of options", fn)
  end
  if opts ~= nil then
    check_opts("spawn", 1, opts, SPAWN_OPTS)
    if opts.name ~= nil and type(opts.name) ~= "string" then
      argerror("spawn", 1, "opts.name as a string", opts.name)
    end
  end
  if self._closed then
    raise_at_user("task group is finished; it takes no new tasks", "invalid_state")
  end
  if self._aborted then -- as asyncio's: the task would never run
    raise_at_user("task group is shutting down (a task in it failed); "
      .. "it takes no new tasks", "invalid_state")
  end
  local t
  if opts then t = spawn(opts, fn, select(2, ...)) else t = spawn(fn, ...) end
  self._remaining = self._remaining + 1
  self.tasks[#self.tasks + 1] = t
  t:add_done_callback(self._on_done)
  return t
end

-- Records an error in the order they came (n counts them: an error may be nil).
function Group:_failed(err)
  local n = self.errors.n + 1
  self.errors[n], self.errors.n = err, n
  self:_abort("a sibling in the task group failed")
end

-- Cancels the children (and the body) with msg: a sibling failed, or the
-- task that runs the group was cancelled (its message, then).
function Group:_abort(msg)
  if self._aborted then return end
  self._aborted = true
  for _, t in ipairs(self.tasks) do
    t:cancel(msg)
  end
  if self._body_running then
    self._parent:cancel(self._token)
  end
end

-- tide.task_group(function(g) ... end, ...) -> the body's results
function M.task_group(body, ...)
  if type(body) ~= "function" then
    argerror("task_group", 1, "function", body)
  end
  local parent = me("tide.task_group")
  local g = setmetatable({ tasks = {}, errors = { n = 0 }, _remaining = 0,
    _parent = parent, _body_running = true }, Group)
  g._token = terror("cancelled", "task group aborted: a child failed")
  g._on_done = runtime(function(t)
    g._remaining = g._remaining - 1
    if t:failed() then g:_failed(t:error()) end
    if g._remaining == 0 and g._waiting then wake(parent) end
  end)
  local r = pack(pcall(body, g, ...))
  g._body_running = false
  core.uncancel(parent, g._token)
  local outer_cancel
  if not r[1] then
    if r[2] ~= g._token then
      if core.iserror(r[2]) and r[2].kind == "cancelled" then
        outer_cancel = r[2]
        g:_abort(r[2].message)
      else -- after a child's error if that came first (and cancelled the body)
        g:_failed(r[2])
      end
    end
  end
  while g._remaining > 0 do
    g._waiting = true
    local ok, err = park()
    g._waiting = false
    if not ok and err ~= g._token then
      outer_cancel = outer_cancel or err
      g:_abort(core.iserror(err) and err.message or tostring(err))
    end
  end
  g._closed = true
  if g.errors.n > 0 then
    for i = 2, g.errors.n do
      io.stderr:write("tide: task group: another child also failed: ",
        tostring(g.errors[i]), "\n")
    end
    error(g.errors[1], 0)
  end
  if outer_cancel then error(outer_cancel, 0) end
  return unpack(r, 2, r.n)
end

-- Timeouts ------------------------------------------------------------


-- tide.timeout(seconds, fn, ...) -> fn's results, or raises kind "timeout"
function M.timeout(seconds, fn, ...)
  if seconds ~= nil then check_seconds("timeout", 1, seconds) end
  if type(fn) ~= "function" then
    argerror("timeout", 2, "function", fn)
  end
  if seconds == nil then -- no deadline, as asyncio.timeout(None)
    need_task("tide.timeout")
    return fn(...)
  end
  local self = me("tide.timeout")
  local before, asked = core.other_cancel(self), core.cancelling(self)
  local token = terror("cancelled", ("deadline of %g s reached"):format(seconds))
  local expired = false
  local on_expiry = runtime(function()
    expired = true
    self:cancel(token)
  end)
  -- a deadline already past cancels at the first suspension, as asyncio's
  -- (call_soon: a 0 s timer would join the queue behind a sleep(0))
  local h = seconds > 0 and call_later(seconds, on_expiry) or core.call_soon(on_expiry)
  local r = pack(pcall(fn, ...))
  h:cancel()
  local other
  if expired then
    other = select(2, core.uncancel(self, token))
    core.cancelling(self, -1) -- ours, taken back (asyncio's uncancel)
  end
  if not r[1] then
    if r[2] == token then
      -- a cancel asked from outside while ours was on its way wins, and so
      -- does one asked during the scope that the task swallowed (asyncio)
      if other ~= nil and other ~= before then error(other, 0) end
      if core.cancelling(self) > asked then error(terror("cancelled", "task cancelled"), 0) end
      error(terror("timeout", ("timed out after %g s"):format(seconds)), 0)
    end
    error(r[2], 0)
  end
  return unpack(r, 2, r.n)
end

-- tide.wait_for(task_or_fn, seconds, ...) -> results, or raises "timeout"
function M.wait_for(x, seconds, ...)
  local t
  if seconds ~= nil then check_seconds("wait_for", 2, seconds) end -- before spawning
  if type(x) == "function" and (seconds == nil or seconds > 0) then
    -- as asyncio 3.12's wait_for of a coroutine: it runs in the calling
    -- task, under a deadline scope (the inner work is cancelled where it
    -- waits, and its end decides: results if it caught the cancel)
    need_task("tide.wait_for")
    return M.timeout(seconds, x, ...)
  end
  if istask(x) then
    t = x
  elseif type(x) == "function" then
    t = spawn(x, ...)
  else
    argerror("wait_for", 1, "task or function", x)
  end
  if seconds == nil then
    return t:await()
  end
  me("tide.wait_for")
  local msg = ("wait_for: timed out after %g s"):format(seconds)
  local err, expired, late
  -- With 0 s or less, as asyncio's: the inner work is cancelled at once
  -- (a function given never starts), unless it is done already.
  if seconds > 0 and not t:done() then
    -- the time's end cancels the inner work then and there, as asyncio's
    -- timeout does (not when the caller next runs: the inner work could
    -- finish in between); the caller wakes when it has ended
    -- (inner work done before the deadline's callback, but the caller not
    -- resumed yet: asyncio cancels the caller then, so it is a timeout)
    local h = call_later(seconds, runtime(function()
      expired = true
      late = not t:cancel(msg)
    end))
    err = join(t)
    h:cancel()
  end
  if t:done() and (err or not expired) then
    if err then error(err, 0) end -- the caller's own cancel, once t is done
    return t:await()
  end
  if late and not err then
    error(terror("timeout", ("timed out after %g s"):format(seconds)), 0)
  end
  if not t:done() then
    -- We were cancelled, or no time was given: cancel the inner work
    -- (again, if the time ran out first: asyncio forwards every cancel)
    -- and wait until it has finished cancelling.
    if err or not expired then t:cancel(err and err.message or msg) end
    repeat
      local e = join(t)
      -- the caller cancelled again: so is the inner work, or, done already, the caller
      if e and not t:cancel(e.message) then error(e, 0) end
      err = e or err
    until t:done()
  end
  -- As asyncio's (3.12), the inner work's end decides, whether the time
  -- ran out or the caller was cancelled: if it caught the cancel and
  -- returned, its results; if it failed otherwise, that error; if it ended
  -- cancelled, the caller's cancellation, else the timeout.
  if not t:cancelled() then return t:await() end
  if err then error(err, 0) end
  error(terror("timeout", ("timed out after %g s"):format(seconds)), 0)
end

-- tide.shield(task_or_fn, ...) -> results; cancelling the caller leaves the
-- task running.
function M.shield(x, ...)
  local t
  if istask(x) then
    t = x
  elseif type(x) == "function" then
    t = spawn(x, ...)
  else
    argerror("shield", 1, "task or function", x)
  end
  local err = join_soon(t)
  if err then error(err, 0) end
  return t:await()
end

-- tide.dump_tasks([file]): every live task as a tree (children under the
-- task that spawned them), with state and the line each one waits at.
function M.dump_tasks(out)
  if out == nil and io then out = io.stderr end -- a sandbox has no io
  local ok, write = pcall(function() return out.write end)
  if not ok or write == nil then
    argerror("dump_tasks", 1, "file (an object with write and flush)", out)
  end
  local rows, kids, roots, n = {}, {}, {}, 0
  for _, t in ipairs(core.all_tasks()) do
    n = n + 1
    local state, id, parent, where = core.task_info(t)
    rows[id] = { t = t, state = state, parent = parent, where = where }
  end
  for id, row in pairs(rows) do
    local list = rows[row.parent] and kids or nil
    if list then
      list[row.parent] = list[row.parent] or {}
      table.insert(list[row.parent], id)
    else
      roots[#roots + 1] = id
    end
  end
  local function show(id, depth)
    local row = rows[id]
    local label = ("  "):rep(depth + 1) .. row.t.name
    out:write(("%-28s %-9s %s\n"):format(label, row.state,
      row.where and ("at " .. row.where) or (row.state == "pending" and "(not started)" or "")))
    local children = kids[id] or {}
    table.sort(children)
    for _, c in ipairs(children) do show(c, depth + 1) end
  end
  table.sort(roots)
  out:write(("tide: %d live task(s), by parent:\n"):format(n))
  for _, id in ipairs(roots) do show(id, 0) end
  out:flush()
end

-- Queues and synchronisation --------------------------------------------

M.Queue, M.PriorityQueue, M.LifoQueue = core.Queue, core.PriorityQueue, core.LifoQueue
local sync = require "tide.sync"
M.Semaphore, M.BoundedSemaphore, M.Lock = sync.Semaphore, sync.BoundedSemaphore, sync.Lock
M.Event, M.Condition, M.Barrier = sync.Event, sync.Condition, sync.Barrier

-- Off the loop (issue 5): loaded on first use.
function M.to_thread(...) return require("tide.thread").to_thread(...) end
function M.signal(...) return require("tide.signal").signal(...) end

-- A busted run in this Lua state: tests must not leave tasks running.
if type(package.loaded.busted) == "table" then require "tide.busted" end

return M
