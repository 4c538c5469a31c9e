-- Specs for tide.fs: files on libuv's fs requests. Fixtures are made and
-- checked with plain io/os where that keeps a spec independent of the code
-- under test; each spec works in a fresh directory under /tmp.
local tide = require "tide"
local fs = require "tide.fs"
local process = require "tide.process"
local S = require "spec.support"
local errkind, raises_matching = S.errkind, S.raises_matching

local TIDE = S.tide_bin()

-- A fresh empty directory, removed after the test.
local function tmpdir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir " .. dir))
  finally(function() os.execute("rm -rf '" .. dir .. "'") end)
  return dir
end

local function put(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function get(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("a")
  f:close()
  return data
end

local function entries(dir)
  local p = io.popen("ls -A '" .. dir .. "'")
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  return names
end

-- Expects fn(...) to raise an "fs" error with code; returns the error.
local function fs_error(code, fn, ...)
  local kind, e = errkind(fn, ...)
  assert.equals("fs", kind)
  assert.equals(code, e.code)
  return e
end

local function fd_count()
  local n = 0
  for _ in fs.list_dir("/proc/self/fd") do n = n + 1 end
  return n
end

-- Waits (up to 2 s) until the directory holds exactly `want` entries.
local function settles(dir, want)
  local deadline = tide.time() + 2
  while #entries(dir) ~= want and tide.time() < deadline do tide.sleep(0.01) end
  return entries(dir)
end

-- Runs a child tide on a script; returns how it ended ("exit"/"signal"),
-- the code and its output.
local function child(script, args, prefix)
  local name = os.tmpname()
  put(name, script)
  local out = os.tmpname()
  local ok, how, code = os.execute((prefix or "") .. TIDE .. " " .. name .. " " .. args
    .. " >" .. out .. " 2>&1")
  local text = get(out)
  os.remove(name)
  os.remove(out)
  return ok, how, code, text
end

describe("fs.read_file", function()
  it("returns the whole content, binary and empty files included", function()
    local dir = tmpdir()
    local bin = "a\0b\r\n\255" .. string.rep("xyz", 100000) -- several reads
    put(dir .. "/bin", bin)
    put(dir .. "/empty", "")
    assert.equals(bin, fs.read_file(dir .. "/bin"))
    assert.equals("", fs.read_file(dir .. "/empty"))
  end)

  it("a missing file's error: kind fs, the errno name, the path", function()
    local dir = tmpdir()
    local e = fs_error("ENOENT", fs.read_file, dir .. "/missing.txt")
    assert.equals(dir .. "/missing.txt", e.path)
    assert.equals("open " .. dir .. "/missing.txt: no such file or directory (ENOENT)", e.message)
    assert.equals("fs: " .. e.message, tostring(e))
  end)

  it("a directory's error is EISDIR", function()
    local dir = tmpdir()
    assert.equals(dir, fs_error("EISDIR", fs.read_file, dir).path)
  end)

  it("suspends only its task: others run while it waits", function()
    local dir = tmpdir()
    put(dir .. "/f", string.rep("x", 1 << 20))
    local ticks = 0
    local ticker = tide.spawn(function() while true do tide.sleep(0); ticks = ticks + 1 end end)
    assert.equals(1 << 20, #fs.read_file(dir .. "/f"))
    ticker:cancel()
    errkind(ticker.await, ticker)
    assert.is_true(ticks > 0)
  end)

  it("keeps a virtual clock still while the request runs", function()
    local dir = tmpdir()
    put(dir .. "/f", "data")
    local r = S.virtual(function()
      return tide.wait_for(function() return fs.read_file(dir .. "/f") end, 0.5)
    end)
    assert.equals("data", r)
  end)

  it("checks its argument", function()
    raises_matching("bad argument #1 to 'read_file' (string expected, got no value)", fs.read_file)
    raises_matching("bad argument #1 to 'read_file' (string expected, got table)", fs.read_file, {})
    local function tail() return fs.read_file({}) end -- located at its caller, as Lua's own
    local line = debug.getinfo(1, "l").currentline + 1
    local ok, e = pcall(function() tail() end)
    assert.equals("spec/fs_spec.lua:" .. line .. ": bad argument #1 to 'read_file' (string expected, got table)", e)
    local got
    tide.call_soon(function() got = select(2, pcall(fs.read_file, "/etc/hostname")) end)
    tide.sleep(0.01)
    assert.matches("read_file must be called from inside a task", tostring(got))
    raises_matching("bad argument #3 to 'write_file' (option 'mode' must be permission bits (0 to 0o7777), got -1)",
      fs.write_file, "/nonexistent/x", "", { mode = -1 })
    raises_matching("bad argument #2 to 'mkdir' (option 'mode' must be permission bits", fs.mkdir,
      "/nonexistent/x/y", { parents = true, mode = 1 << 20 })
  end)
end)

describe("fs.write_file", function()
  it("atomic: a long name that a plain write takes works; a link loop is ELOOP, the link kept", function()
    local dir = tmpdir()
    local long = dir .. "/" .. ("n"):rep(250)
    fs.write_file(long, "old")
    fs.write_file(long, "new", { atomic = true })
    assert.equals("new", fs.read_file(long))
    assert(os.execute("ln -s l1 " .. dir .. "/l2 && ln -s l2 " .. dir .. "/l1"))
    for _, opts in ipairs({ {}, { atomic = true } }) do
      local e = select(2, pcall(fs.write_file, dir .. "/l1", "x", opts))
      assert.equals("ELOOP", e.code)
    end
    assert.equals("link", fs.lstat(dir .. "/l1").type)
  end)

  it("reads and writes pipes and FIFOs (no offsets there)", function()
    local dir = tmpdir()
    assert(os.execute("mkfifo " .. dir .. "/fifo"))
    local process = require "tide.process"
    local p = process.spawn({ "sh", "-c", "printf hello > " .. dir .. "/fifo" })
    assert.equals("hello", fs.read_file(dir .. "/fifo"))
    p:wait()
    local r = process.spawn({ "cat", dir .. "/fifo" }, { stdout = "pipe" })
    fs.write_file(dir .. "/fifo", "back")
    assert.equals("back", r.stdout:read_all())
    r:wait()
  end)

  it("creates or truncates the file", function()
    local dir = tmpdir()
    fs.write_file(dir .. "/f", "first version, long")
    fs.write_file(dir .. "/f", "second")
    assert.equals("second", get(dir .. "/f"))
    fs.write_file(dir .. "/big", string.rep("\0\1", 1 << 20))
    assert.equals(2 << 20, #get(dir .. "/big"))
  end)

  it("gives a created file the mode asked", function()
    local dir = tmpdir()
    fs.write_file(dir .. "/secret", "s", { mode = tonumber("600", 8) })
    fs.write_file(dir .. "/secret2", "s", { mode = tonumber("600", 8), atomic = true })
    assert.equals(tonumber("600", 8), fs.stat(dir .. "/secret").mode)
    assert.equals(tonumber("600", 8), fs.stat(dir .. "/secret2").mode)
  end)

  it("atomic: replaces the content and leaves no temp file", function()
    local dir = tmpdir()
    put(dir .. "/f", "old")
    fs.write_file(dir .. "/f", "new content", { atomic = true })
    assert.equals("new content", get(dir .. "/f"))
    assert.same({ "f" }, entries(dir))
    fs.write_file(dir .. "/g", "made", { atomic = true })
    assert.equals("made", get(dir .. "/g"))
    assert.same({ "f", "g" }, entries(dir))
  end)

  it("atomic: a missing directory's error names the caller's path and cleans up", function()
    local dir = tmpdir()
    local e = fs_error("ENOENT", fs.write_file, dir .. "/no/f", "x", { atomic = true })
    assert.equals(dir .. "/no/f", e.path)
    assert.equals("open " .. dir .. "/no/f: no such file or directory (ENOENT)", e.message)
    assert.same({}, entries(dir))
  end)

  it("atomic: over an existing file, keeps its permission bits unless mode is given", function()
    local dir = tmpdir()
    put(dir .. "/f", "old")
    assert(os.execute("chmod 640 " .. dir .. "/f"))
    fs.write_file(dir .. "/f", "new", { atomic = true })
    assert.equals("new", get(dir .. "/f"))
    assert.equals(tonumber("640", 8), fs.stat(dir .. "/f").mode)
    fs.write_file(dir .. "/f", "newer", { atomic = true, mode = tonumber("600", 8) })
    assert.equals(tonumber("600", 8), fs.stat(dir .. "/f").mode)
  end)

  it("atomic: through a symbolic link, replaces the link's target", function()
    local dir = tmpdir()
    assert(os.execute("mkdir " .. dir .. "/real"))
    put(dir .. "/real/f", "old")
    assert(os.execute("ln -s real/f " .. dir .. "/link"))
    fs.write_file(dir .. "/link", "new", { atomic = true })
    assert.equals("link", fs.lstat(dir .. "/link").type)
    assert.equals("new", get(dir .. "/real/f"))
    assert.same({ "f" }, entries(dir .. "/real"))
    assert.same({ "link", "real" }, entries(dir))
  end)

  it("atomic: through a dangling symbolic link, creates its target as open() would", function()
    local dir = tmpdir()
    assert(os.execute("mkdir " .. dir .. "/sub && ln -s sub/new " .. dir .. "/link"))
    fs.write_file(dir .. "/link", "made", { atomic = true })
    assert.equals("link", fs.lstat(dir .. "/link").type)
    assert.equals("made", get(dir .. "/sub/new"))
  end)

  it("atomic: killed with SIGKILL midway, the old content is intact", function()
    local dir = tmpdir()
    local target = dir .. "/data"
    put(target, "old content")
    -- The child dies by SIGKILL once half the new data is in the temp file.
    local ok, how, code, out = child([[
      local tide = require "tide"
      local fs = require "tide.fs"
      local target = ...
      local probe = fs.open(target)
      local methods = getmetatable(probe).__index
      probe:close()
      local write = methods.write
      methods.write = function(self, data)
        write(self, data:sub(1, #data // 2))
        os.execute("kill -KILL $PPID")
        tide.sleep(10)
      end
      fs.write_file(target, string.rep("new ", 1 << 20), { atomic = true })
      print("not killed")
    ]], target)
    assert.is_nil(ok, out)
    assert.is_true((how == "signal" and code == 9) or (how == "exit" and code == 137), out)
    assert.equals("old content", get(target))
    local names = entries(dir)
    assert.equals(2, #names, table.concat(names, " "))
    local tmp = names[1] == "data" and names[2] or names[1]
    assert.matches("^%.data%..*%.tmp$", tmp)
    assert.equals(2 << 20, #get(dir .. "/" .. tmp)) -- it was killed midway
  end)

  it("atomic: a write that fails leaves the old content and no temp file", function()
    local dir = tmpdir()
    local target = dir .. "/data"
    put(target, "old content")
    -- A file size limit makes the write fail with EFBIG part of the way.
    local ok, _, _, out = child([[
      local fs = require "tide.fs"
      local ok, e = pcall(fs.write_file, ..., string.rep("n", 8 << 20), { atomic = true })
      print(ok, e.code, e.path, e.message)
    ]], target, "trap '' XFSZ; ulimit -f 1024; ")
    assert.is_true(ok, out)
    assert.equals(("false\tEFBIG\t%s\twrite %s: file too large (EFBIG)\n"):format(target, target), out)
    assert.equals("old content", get(target))
    assert.same({ "data" }, entries(dir))
  end)

  it("atomic: cancelled at any point, the content is old or new, never partial, and the temp goes", function()
    local dir = tmpdir()
    local target = dir .. "/data"
    put(target, "old")
    local big = string.rep("x", 16 << 20)
    for wait = 0, 0.03, 0.002 do
      local t = tide.spawn(fs.write_file, target, big, { atomic = true })
      tide.sleep(wait)
      if t:done() then -- finished before the cancel: start again from "old"
        t:await()
        put(target, "old")
      else
        t:cancel()
        assert.equals("cancelled", (errkind(t.await, t)))
        -- old, or all of the new when the cancel came as the rename ran
        -- (the pool cannot stop it), never a part
        local now = get(target)
        assert.is_true(now == "old" or now == big, #now .. " bytes")
        if now == big then put(target, "old") end
        assert.same({ "data" }, settles(dir, 1))
      end
    end
  end)

  it("checks its arguments", function()
    raises_matching("bad argument #2 to 'write_file' (string expected, got no value)",
      fs.write_file, "/tmp/x")
    -- a nil given is "nil", as luaL's (it said "no value" for both)
    raises_matching("bad argument #2 to 'write_file' (string expected, got nil)",
      fs.write_file, "/tmp/x", nil)
    raises_matching("bad argument #1 to 'mkdir' (string expected, got nil)", fs.mkdir, nil, {})
    raises_matching("bad argument #3 to 'write_file' (unknown option 'atomc')",
      fs.write_file, "/tmp/x", "", { atomc = true })
    raises_matching("bad argument #3 to 'write_file' (option 'mode' must be an integer, got string)",
      fs.write_file, "/tmp/x", "", { mode = "644" })
    raises_matching("bad argument #3 to 'write_file' (option 'mode' must be an integer, got 1.5)",
      fs.write_file, "/tmp/x", "", { mode = 1.5 })
    raises_matching("bad argument #3 to 'write_file' (option 'atomic' must be a boolean, got string)",
      fs.write_file, "/tmp/x", "", { atomic = "yes" })
    raises_matching("bad argument #1 to 'write_file' (path contains a zero byte)",
      fs.write_file, "/tmp/x\0y", "", { atomic = true })
    raises_matching("bad argument #1 to 'read_file' (path contains a zero byte)", fs.read_file, "a\0b")
    raises_matching("bad argument #1 to 'remove' (path contains a zero byte)", fs.remove, "a\0b")
  end)
end)

describe("fs.append_file", function()
  it("appends, creating the file when missing", function()
    local dir = tmpdir()
    fs.append_file(dir .. "/log", "one\n")
    fs.append_file(dir .. "/log", "two\n")
    assert.equals("one\ntwo\n", get(dir .. "/log"))
  end)

  it("into a missing directory: ENOENT", function()
    local dir = tmpdir()
    fs_error("ENOENT", fs.append_file, dir .. "/no/log", "x")
  end)
end)

describe("fs.open", function()
  it("closes a file whose open finished just before a cancel, without waiting for the collector", function()
    local dir = tmpdir()
    put(dir .. "/f", "x")
    collectgarbage("stop") -- a leak must show, not be hidden by a collection
    local before = fd_count()
    for _ = 1, 100 do pcall(tide.timeout, 0, function() local f <close> = fs.open(dir .. "/f") end) end
    for _ = 1, 100 do pcall(tide.timeout, 0.0005, fs.read_file, dir .. "/f") end
    for _ = 1, 4 do tide.sleep(0.02) end
    local after = fd_count()
    collectgarbage("restart")
    assert.equals(before, after)
  end)

  it("reads in pieces: read(n) up to n bytes, read() the rest, both nil at the end", function()
    local dir = tmpdir()
    put(dir .. "/f", "hello world")
    local f <close> = fs.open(dir .. "/f")
    assert.equals("hello", f:read(5))
    assert.equals(" world", f:read())
    assert.is_nil(f:read())
    assert.is_nil(f:read(1))
    assert.equals(0, f:seek("set"))
    assert.equals("hello world", f:read(100))
    local g <close> = fs.open(dir .. "/f")
    local parts = {}
    while true do -- the loop API.md shows ends
      local s = g:read()
      if not s then break end
      parts[#parts + 1] = s
    end
    assert.same({ "hello world" }, parts)
  end)

  it("writes (chaining), seeks like io and reads back with w+", function()
    local dir = tmpdir()
    local f = fs.open(dir .. "/f", "w+")
    assert.equals(f, f:write("abc"):write("def"))
    assert.equals(6, f:seek())
    assert.equals(1, f:seek("set", 1))
    assert.equals("bc", f:read(2))
    assert.equals(4, f:seek("cur", 1))
    assert.equals("ef", f:read())
    assert.equals(4, f:seek("end", -2))
    f:write("XY")
    assert.equals(8, f:seek("end", 2))
    f:write("!")
    f:close()
    assert.equals("abcdXY\0\0!", get(dir .. "/f"))
  end)

  it("write(...) writes every argument in order, strings and numbers, like io.write", function()
    local dir = tmpdir()
    local f = fs.open(dir .. "/f", "w")
    assert.equals(f, f:write("a", "b", 3, "-", 2.5, " ", 3.0, " ", -0.0, " ", 1 / 3):write())
    f:close()
    -- io.write's "%.14g" for floats: 3.0 as "3" (it was "3.0", as tostring)
    assert.equals("ab3-2.5 3 -0 0.33333333333333", get(dir .. "/f"))
  end)

  it("read(0) is \"\" before the end and nil at it, and does not move", function()
    local dir = tmpdir()
    put(dir .. "/f", "xy")
    local f <close> = fs.open(dir .. "/f")
    assert.equals("", f:read(0))
    assert.equals("xy", f:read())
    assert.is_nil(f:read(0))
    assert.equals(2, f:seek())
  end)

  it("r+ overwrites in place; a and a+ write at the end", function()
    local dir = tmpdir()
    put(dir .. "/f", "0123456789")
    local f = fs.open(dir .. "/f", "r+")
    f:seek("set", 2)
    f:write("ab")
    f:close()
    assert.equals("01ab456789", get(dir .. "/f"))
    f = fs.open(dir .. "/f", "a+")
    assert.equals("01", f:read(2))
    f:write("Z")
    assert.equals(11, f:seek())
    f:seek("set", 0)
    f:write("W") -- still at the end
    f:close()
    assert.equals("01ab456789ZW", get(dir .. "/f"))
  end)

  it("modes: w truncates, wx fails on an existing file", function()
    local dir = tmpdir()
    put(dir .. "/f", "old")
    fs.open(dir .. "/f", "wb"):close()
    assert.equals("", get(dir .. "/f"))
    fs_error("EEXIST", fs.open, dir .. "/f", "wx")
    fs.open(dir .. "/new", "w+x"):write("n"):close()
    assert.equals("n", get(dir .. "/new"))
  end)

  it("errors carry the file's path: reading a write-only file is EBADF", function()
    local dir = tmpdir()
    local f <close> = fs.open(dir .. "/f", "w")
    local e = fs_error("EBADF", f.read, f)
    assert.equals(dir .. "/f", e.path)
    assert.equals("read " .. dir .. "/f: bad file descriptor (EBADF)", e.message)
    e = fs_error("EINVAL", f.seek, f, "set", -1)
    assert.equals(dir .. "/f", e.path)
  end)

  it("<close> closes; a closed file says so; tostring shows the path", function()
    local dir = tmpdir()
    local keep
    do
      local f <close> = fs.open(dir .. "/f", "w")
      keep = f
      assert.equals("tide.File (" .. dir .. "/f)", tostring(f))
    end
    assert.equals("tide.File (closed)", tostring(keep))
    assert.equals("closed", (errkind(keep.read, keep)))
    assert.equals("closed", (errkind(keep.close, keep)))
  end)

  it("files dropped without close are closed by the collector", function()
    local dir = tmpdir()
    put(dir .. "/f", "x")
    collectgarbage()
    tide.sleep(0.01)
    local before = fd_count()
    local files = {}
    for i = 1, 50 do files[i] = fs.open(dir .. "/f") end
    assert.is_true(fd_count() >= before + 50)
    files = nil
    collectgarbage()
    collectgarbage()
    local deadline = tide.time() + 2
    while fd_count() > before and tide.time() < deadline do tide.sleep(0.01) end
    assert.is_true(fd_count() <= before)
  end)

  it("a call while another is in flight says busy; close() after a cancelled read works", function()
    local dir = tmpdir()
    put(dir .. "/f", string.rep("x", 4 << 20))
    local f = fs.open(dir .. "/f")
    local t = tide.spawn(f.read, f)
    tide.sleep(0)
    assert.equals("busy", (errkind(f.read, f, 1)))
    t:cancel()
    assert.equals("cancelled", (errkind(t.await, t)))
    f:close() -- closes once the pool's read is over
    assert.equals("closed", (errkind(f.read, f)))
  end)

  it("a call after a cancelled one waits for that request to end, then runs", function()
    local dir = tmpdir()
    local fifo = dir .. "/fifo"
    assert(os.execute("mkfifo " .. fifo))
    -- "a+" writes with write(2), which blocks while nobody drains the fifo
    local f <close> = fs.open(fifo, "a+")
    finally(function() -- unblocks the write whatever happened
      os.execute("timeout 10 cat " .. fifo .. " >/dev/null 2>&1 &")
    end)
    local head = process.spawn({ "head", "-c", "1", fifo })
    local t = tide.spawn(f.write, f, string.rep("x", 1 << 20))
    assert.equals("x", head.stdout:read(1)) -- the write is under way...
    head:wait()
    t:cancel() -- ...and stays there, cancelled: nobody reads
    assert.equals("cancelled", (errkind(t.await, t)))
    local w = tide.spawn(f.write, f, "never") -- waits for it
    tide.sleep(0.05)
    assert.equals("busy", (errkind(f.write, f, "no"))) -- w waits already
    w:cancel() -- and never runs
    assert.equals("cancelled", (errkind(w.await, w)))
    local ab = tide.spawn(f.write, f, "ab")
    tide.sleep(0.05)
    assert.is_false(ab:done(), "did not wait")
    local cat <close> = process.spawn({ "cat", fifo })
    local got = {}
    tide.wait_for(function()
      repeat
        got[#got + 1] = cat.stdout:read()
      until not got[#got] or got[#got]:find("b", 1, true)
    end, 5)
    assert.equals(f, ab:await())
    local data = table.concat(got)
    assert.equals("ab", data:match("[^x]*$"))
  end)

  it("a cancelled open leaves no fd open and no file made by wx", function()
    local dir = tmpdir()
    collectgarbage()
    tide.sleep(0.01)
    local before = fd_count()
    for i = 1, 20 do
      local t = tide.spawn(fs.open, dir .. "/f" .. i, "wx")
      tide.sleep(0)
      t:cancel()
      pcall(t.await, t)
    end
    collectgarbage()
    local left = settles(dir, 0)
    assert.same({}, left)
    local deadline = tide.time() + 2
    while fd_count() > before and tide.time() < deadline do tide.sleep(0.01) end
    assert.is_true(fd_count() <= before)
  end)

  it("checks its arguments", function()
    raises_matching("bad argument #2 to 'open' (invalid mode)", function() return fs.open("/tmp/x", "rw") end)
    raises_matching("bad argument #2 to 'open' (invalid mode)", function() return fs.open("/tmp/x", "rx") end)
    raises_matching("bad argument #1 to 'open' (path contains a zero byte)",
      function() return fs.open("/tmp/x\0y") end)
    raises_matching("bad argument #1 to 'read' (non-negative byte count expected)", function()
      local f <close> = fs.open("/dev/null")
      return f:read(-1)
    end)
    raises_matching("bad argument #2 to 'write' (string expected, got table)", function()
      local f <close> = fs.open("/dev/null", "w")
      return f:write("a", {})
    end)
  end)
end)

describe("File:close", function()
  it("returns true, as Lua's file:close()", function()
    local dir = tmpdir()
    put(dir .. "/f", "x")
    local f = fs.open(dir .. "/f")
    assert.is_true(f:close())
  end)
end)

describe("fs.stat", function()
  it("size, mode, mtime and type of a file and a directory", function()
    local dir = tmpdir()
    put(dir .. "/f", "12345")
    assert(os.execute("chmod 640 " .. dir .. "/f"))
    local st = fs.stat(dir .. "/f")
    assert.equals("file", st.type)
    assert.equals(5, st.size)
    assert.equals(tonumber("640", 8), st.mode)
    assert.is_true(math.abs(st.mtime - os.time()) < 5)
    assert.equals(1, st.nlink)
    assert.equals("directory", fs.stat(dir).type)
  end)

  it("follows links; lstat does not", function()
    local dir = tmpdir()
    put(dir .. "/f", "x")
    assert(os.execute("ln -s f " .. dir .. "/l"))
    assert.equals("file", fs.stat(dir .. "/l").type)
    assert.equals("link", fs.lstat(dir .. "/l").type)
  end)

  it("a missing path: ENOENT with the path", function()
    local dir = tmpdir()
    local e = fs_error("ENOENT", fs.stat, dir .. "/none")
    assert.equals(dir .. "/none", e.path)
  end)
end)

describe("fs.exists", function()
  it("true for files and directories, false (no error) for missing paths", function()
    local dir = tmpdir()
    put(dir .. "/f", "x")
    assert.is_true(fs.exists(dir .. "/f"))
    assert.is_true(fs.exists(dir))
    assert.is_false(fs.exists(dir .. "/none"))
    assert.is_false(fs.exists(dir .. "/f/below-a-file"))
    os.execute(("ln -s l2 %s/l1 && ln -s l1 %s/l2"):format(dir, dir))
    assert.is_false(fs.exists(dir .. "/l1")) -- a link loop, as Python's exists
  end)

  it("false for a path too long or one it may not look into, as Python's os.path.exists", function()
    assert.is_false(fs.exists("/" .. string.rep("n", 5000))) -- it raised ENAMETOOLONG
    -- EACCES needs a user other than root: a child process run as nobody
    local dir = tmpdir()
    put(dir .. "/f", "x")
    os.execute("chmod 700 " .. dir)
    local out = io.popen(("runuser -u nobody -- %s -e 'print(require(\"tide.fs\").exists(\"%s/f\"))' 2>&1")
      :format(S.tide_bin(), dir)):read("a")
    if out:find("runuser") then return end -- not root: nothing to check
    assert.equals("false\n", out)
  end)
end)

describe("fs.list_dir", function()
  it("iterates name, type in name order", function()
    local dir = tmpdir()
    put(dir .. "/b", "")
    assert(os.execute("mkdir " .. dir .. "/a && ln -s b " .. dir .. "/c"))
    local got = {}
    for name, type in fs.list_dir(dir) do got[#got + 1] = name .. "=" .. type end
    assert.same({ "a=directory", "b=file", "c=link" }, got)
  end)

  it("an empty directory yields nothing; a missing one raises", function()
    local dir = tmpdir()
    for _ in fs.list_dir(dir) do error("not empty") end
    fs_error("ENOENT", fs.list_dir, dir .. "/none")
    fs_error("ENOTDIR", fs.list_dir, "/dev/null")
  end)
end)

describe("fs.mkdir", function()
  it("makes one directory; an existing one is EEXIST", function()
    local dir = tmpdir()
    fs.mkdir(dir .. "/d")
    assert.equals("directory", fs.stat(dir .. "/d").type)
    fs_error("EEXIST", fs.mkdir, dir .. "/d")
    fs_error("ENOENT", fs.mkdir, dir .. "/x/y")
  end)

  it("parents = true makes the missing parents, and is fine if it exists", function()
    local dir = tmpdir()
    fs.mkdir(dir .. "/a/b//c/", { parents = true })
    assert.equals("directory", fs.stat(dir .. "/a/b/c").type)
    fs.mkdir(dir .. "/a/b/c", { parents = true })
    put(dir .. "/file", "")
    fs_error("EEXIST", fs.mkdir, dir .. "/file", { parents = true })
    fs_error("ENOTDIR", fs.mkdir, dir .. "/file/x/y", { parents = true })
  end)

  it("mode applies (less the umask)", function()
    local dir = tmpdir()
    fs.mkdir(dir .. "/d", { mode = tonumber("700", 8) })
    assert.equals(tonumber("700", 8), fs.stat(dir .. "/d").mode)
    -- with parents, to the last one only (as Python's os.makedirs, mkdir -p -m)
    local umask = tonumber(io.popen("umask"):read("l"), 8)
    fs.mkdir(dir .. "/p/q/r", { parents = true, mode = tonumber("700", 8) })
    assert.equals(tonumber("700", 8), fs.stat(dir .. "/p/q/r").mode)
    assert.equals(tonumber("777", 8) & ~umask, fs.stat(dir .. "/p").mode)
    assert.equals(tonumber("777", 8) & ~umask, fs.stat(dir .. "/p/q").mode)
  end)
end)

describe("fs.remove", function()
  it("removes a file and an empty directory", function()
    local dir = tmpdir()
    put(dir .. "/f", "")
    assert(os.execute("mkdir " .. dir .. "/d"))
    fs.remove(dir .. "/f")
    fs.remove(dir .. "/d")
    assert.same({}, entries(dir))
    fs_error("ENOENT", fs.remove, dir .. "/f")
  end)

  it("a non-empty directory needs recursive = true", function()
    local dir = tmpdir()
    assert(os.execute("mkdir -p " .. dir .. "/d/e/f && touch " .. dir .. "/d/e/f/x " .. dir .. "/d/y"))
    fs_error("ENOTEMPTY", fs.remove, dir .. "/d")
    fs.remove(dir .. "/d", { recursive = true })
    assert.same({}, entries(dir))
  end)

  it("recursive removes links, not what they point to", function()
    local dir = tmpdir()
    assert(os.execute("mkdir " .. dir .. "/keep " .. dir .. "/d && touch " .. dir .. "/keep/x && ln -s ../keep "
      .. dir .. "/d/link"))
    fs.remove(dir .. "/d", { recursive = true })
    assert.same({ "keep" }, entries(dir))
    assert.same({ "x" }, entries(dir .. "/keep"))
  end)
end)

describe("fs.rename", function()
  it("moves and replaces", function()
    local dir = tmpdir()
    put(dir .. "/a", "A")
    put(dir .. "/b", "B")
    fs.rename(dir .. "/a", dir .. "/b")
    assert.same({ "b" }, entries(dir))
    assert.equals("A", get(dir .. "/b"))
  end)

  it("a missing source: ENOENT naming both paths", function()
    local dir = tmpdir()
    local e = fs_error("ENOENT", fs.rename, dir .. "/a", dir .. "/b")
    assert.equals(dir .. "/a", e.path)
    assert.equals("rename " .. dir .. "/a -> " .. dir .. "/b: no such file or directory (ENOENT)", e.message)
  end)
end)
