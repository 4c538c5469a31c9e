-- tide/fs_lua.lua: the Lua half of "tide.fs". host/fs.c loads this chunk
-- with its primitives (one libuv request each) and returns what it builds:
-- the calls made of several requests, read_file, write_file (atomic: a temp
-- file next to the target (a symbolic link's target), written, given the
-- old file's mode, synced, renamed over the target; removed again on any
-- failure; errors name the caller's path), append_file, mkdir with parents,
-- recursive remove and list_dir. Not a module of its own.
local C = ...
if type(C) ~= "table" then
  error('tide.fs_lua is the Lua half of tide.fs: require "tide.fs"', 2)
end

local fs = {
  open = C.open, stat = C.stat, lstat = C.lstat, exists = C.exists,
  rename = C.rename,
}

local core = require "tide.core"
local need_task = core.need_task
-- Raises as luaL_argerror would, at the user's call (a tail call: its caller).
local argerror = require("tide.core").argerror

-- Raises a luaL_checkstring-style error at the user's call; n: how many
-- arguments the call had ("got no value" past them, "got nil" for a nil
-- given, as luaL's).
local function check_string(fname, i, v, n)
  local t = type(v)
  if t ~= "string" and t ~= "number" then
    argerror(fname, i, "string expected, got " .. (i > n and "no value" or t))
  end
end

-- The same for a path: open(2) would stop at a zero byte.
local function check_path(fname, i, v, n)
  local t = type(v)
  if t ~= "string" and t ~= "number" then
    argerror(fname, i, "string expected, got " .. (i > n and "no value" or t))
  end
  if t == "string" and v:find("\0", 1, true) then
    argerror(fname, i, "path contains a zero byte")
  end
end

-- The options table (or {}); unknown names and wrong types are errors.
local function options(fname, i, opts, types)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    argerror(fname, i, "table expected, got " .. type(opts))
  end
  for k, v in pairs(opts) do
    if types[k] == nil then
      argerror(fname, i, ("unknown option '%s'"):format(tostring(k)))
    elseif type(v) ~= types[k] and not (types[k] == "integer" and type(v) == "number"
        and math.tointeger(v)) then
      argerror(fname, i, ("option '%s' must be a%s %s, got %s"):format(k,
        types[k] == "integer" and "n" or "", types[k],
        type(v) == "number" and tostring(v) or type(v)))
    elseif k == "mode" and (v < 0 or v > 4095) then
      argerror(fname, i, ("option 'mode' must be permission bits (0 to 0o7777), got %s"):format(v))
    end
  end
  return opts
end

-- Calls fn; returns its result, or nil and the error for an "fs" error.
-- Anything else (a cancellation) goes on up.
local function try(fn, ...)
  local ok, r = pcall(fn, ...)
  if ok then return r end
  if type(r) == "table" and r.kind == "fs" then return nil, r end
  error(r, 0)
end

function fs.read_file(...)
  local path = ...
  need_task("read_file")
  check_path("read_file", 1, path, select("#", ...))
  local f <close> = C.open(path, "r")
  local data = f:read() or "" -- nil at the end: an empty file
  f:close()
  return data
end

local function write(path, data, mode, perm)
  local f <close> = C.open(path, mode, perm)
  f:write(data)
  f:close()
end

-- Creates a new temp file next to path (O_EXCL; a fresh name per try).
local function open_temp(path, perm)
  local err
  for _ = 1, 100 do
    local tmp = C.temp_name(path)
    local ok, f = pcall(C.open, tmp, "wx", perm)
    if ok then return f, tmp end
    if type(f) ~= "table" or f.kind ~= "fs" then
      -- cancelled: an open that ended meanwhile made the file all the same
      -- (one still running is undone by fs.c)
      pcall(C.unlink, tmp)
      error(f, 0)
    elseif f.code ~= "EEXIST" then
      error(f, 0)
    end
    err = f
  end
  error(err, 0)
end

-- An error about the temp file of an atomic write of path (e.path is the
-- temp), told about path instead: the caller never saw the temp's name.
local function retarget(e, real, path)
  if type(e) == "table" and e.kind == "fs" and type(e.path) == "string" then
    local m, tmp = e.message, e.path
    local i, j = m:find(tmp .. " -> " .. real, 1, true) -- the rename
    if not i then i, j = m:find(tmp, 1, true) end
    if i then e.message = m:sub(1, i - 1) .. path .. m:sub(j + 1) end
    e.path = path
  end
  return e
end

-- Through a symbolic link the link's target is replaced (the temp file goes
-- next to it), and an existing file keeps its permission bits unless perm
-- is given.
-- Where a write to path lands: its real path, or, when it does not exist
-- yet, the end of its chain of symbolic links (a dangling link's target is
-- created, as open() would).
local function landing(path)
  path = tostring(path) -- a number names a file too
  local real = try(C.realpath, path)
  if real then return real end
  local start = path
  for _ = 1, 40 do -- the kernel's limit on links followed
    local st = try(C.lstat, path)
    if not (st and st.type == "link") then return path end
    local to = C.readlink(path)
    path = to:sub(1, 1) == "/" and to or (path:match("^(.*/)") or "") .. to
  end
  -- a loop: as open(2) would say (the rename would replace a link)
  error(core.error("fs", ("open %s: too many symbolic links encountered (ELOOP)"):format(start),
    { code = "ELOOP", path = start }), 0)
end

local function write_atomic(path, data, perm)
  local real = landing(path) -- nil: no such file yet
  local old = not perm and try(C.stat, real)
  local tmp
  local ok, e = pcall(function()
    local f <close>, t = open_temp(real, perm)
    tmp = t
    f:write(data)
    if old then C.fchmod(f, old.mode) end
    f:sync()
    f:close()
    C.rename(tmp, real)
  end)
  if not ok then
    if tmp then pcall(C.unlink, tmp) end
    error(retarget(e, real, path), 0)
  end
end

function fs.write_file(...)
  local path, data, opts = ...
  need_task("write_file")
  check_path("write_file", 1, path, select("#", ...))
  check_string("write_file", 2, data, select("#", ...))
  opts = options("write_file", 3, opts, { atomic = "boolean", mode = "integer" })
  if opts.atomic then
    return write_atomic(path, data, opts.mode)
  end
  return write(path, data, "w", opts.mode)
end

function fs.append_file(...)
  local path, data = ...
  need_task("append_file")
  check_path("append_file", 1, path, select("#", ...))
  check_string("append_file", 2, data, select("#", ...))
  return write(path, data, "a")
end

local function isdir(path)
  local st = try(C.stat, path)
  return st ~= nil and st.type == "directory"
end

function fs.mkdir(...)
  local path, opts = ...
  need_task("mkdir")
  check_path("mkdir", 1, path, select("#", ...))
  opts = options("mkdir", 2, opts, { parents = "boolean", mode = "integer" })
  if not opts.parents then
    return C.mkdir(path, opts.mode)
  end
  local _, e = try(C.mkdir, path, opts.mode)
  if e and e.code == "ENOENT" then -- a parent is missing: make it, retry
    local parent = path:match("^(.*[^/])/+[^/]+/*$")
    if parent then -- with the default mode: opts.mode is the leaf's (as os.makedirs, mkdir -p -m)
      fs.mkdir(parent, { parents = true })
      _, e = try(C.mkdir, path, opts.mode)
    end
  end
  if e and not (e.code == "EEXIST" and isdir(path)) then
    error(e, 0)
  end
end

function fs.list_dir(...)
  local path = ...
  need_task("list_dir")
  check_path("list_dir", 1, path, select("#", ...))
  local names, types = C.scandir(path)
  local i = 0
  return function()
    i = i + 1
    return names[i], types[i]
  end
end

function fs.remove(...)
  local path, opts = ...
  need_task("remove")
  check_path("remove", 1, path, select("#", ...))
  opts = options("remove", 2, opts, { recursive = "boolean" })
  local _, e = try(C.unlink, path)
  if not e then return end
  -- unlink(2) says EISDIR (Linux) or EPERM (POSIX) for a directory
  if (e.code ~= "EISDIR" and e.code ~= "EPERM") or C.lstat(path).type ~= "directory" then
    error(e, 0)
  end
  if opts.recursive then
    for name in fs.list_dir(path) do
      fs.remove(path .. "/" .. name, opts)
    end
  end
  C.rmdir(path)
end

return fs
