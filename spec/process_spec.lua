-- Specs for tide.process: subprocesses (host/process.c, lua/tide/process_lua.lua),
-- against real children (sh, cat, sleep). "Gone" means /proc/<pid> no longer
-- exists: neither running nor a zombie waiting to be reaped.
local tide = require "tide"
local process = require "tide.process"
local lfs = require "lfs"
local S = require "spec.support"
local errkind, raises = S.errkind, S.raises_matching

local function exists(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if f then f:close() end
  return f ~= nil
end

-- Whether pid disappears within a second (the loop runs meanwhile).
local function gone(pid)
  local deadline = tide.time() + 1
  while exists(pid) do
    if tide.time() > deadline then return false end
    tide.sleep(0.01)
  end
  return true
end

-- Descriptors open now; the first stream on a loop opens one for good
-- (libuv's reserve for EMFILE), so a pipe is made first.
local function fd_count()
  process.run({ "true" }, { input = "" })
  collectgarbage()
  local n = 0
  for _ in lfs.dir("/proc/self/fd") do n = n + 1 end
  return n
end

-- Runs a shell script that first writes its pid to a file; returns the
-- task running fn(argv) and, once the script started, the pid.
local function started(fn, script)
  local file = os.tmpname()
  local t = tide.spawn(fn, { "/bin/sh", "-c", "echo $$ > " .. file .. "; " .. script })
  local pid
  for _ = 1, 200 do
    local f = io.open(file)
    pid = f and tonumber(f:read("a"))
    if f then f:close() end
    if pid then break end
    tide.sleep(0.01)
  end
  os.remove(file)
  assert.is_number(pid, "the child did not start")
  return t, pid
end

describe("tide.process", function()
  it("leaves os.execute's and io.popen's children the standard streams", function()
    local r = process.run({ S.tide_bin(), "-e", [[
      require "tide.process"
      os.execute("echo from-execute")
      local h = io.popen("cat", "w")
      h:write("from-popen\n")
      h:close()]] })
    assert.equals("from-execute\nfrom-popen\n", r.stdout)
  end)

  describe("run", function()
    it("returns code, stdout and stderr, and does not raise for a non-zero exit", function()
      local r = process.run({ "sh", "-c", "printf out; printf err >&2; exit 3" })
      assert.same({ code = 3, stdout = "out", stderr = "err" }, r)
    end)

    it("stderr = \"stdout\" sends both into stdout, in order, as asyncio's STDOUT", function()
      local base = fd_count()
      local r = process.run({ "sh", "-c", "echo out; echo err >&2; echo out2" }, { stderr = "stdout" })
      assert.same({ code = 0, stdout = "out\nerr\nout2\n" }, r)
      r = process.run({ "sh", "-c", "echo err >&2" }, { stderr = "stdout", stdout = "null" })
      assert.same({ code = 0 }, r)
      assert.equals(base, fd_count())
      local ok, e = pcall(process.run, { "true" }, { stdout = "stdout" })
      assert.is_false(ok)
      assert.matches("bad argument #2 .*opts.stdout: \"pipe\", \"inherit\" or \"null\" expected, got 'stdout'", e)
    end)

    it("stderr = \"stdout\" with stdout inherited writes both to tide's stdout", function()
      local out = assert(io.popen(("%s -e 'local p = require(\"tide.process\"); "
        .. "p.run({\"sh\", \"-c\", \"echo e >&2\"}, {stdout = \"inherit\", stderr = \"stdout\"})' 2>/dev/null")
        :format(require("spec.support").tide_bin())))
      assert.equals("e\n", out:read("a"))
      out:close()
    end)

    it("passes arguments as they are, never through a shell", function()
      local r = process.run({ "printf", "%s|", "$HOME; echo hi", "*" })
      assert.equals("$HOME; echo hi|*|", r.stdout)
    end)

    it("feeds input to stdin, then closes it", function()
      local input = ("0123456789abcdef"):rep(1 << 16) -- 1 MiB: over the pipe's buffer
      local r = process.run({ "cat" }, { input = input })
      assert.equals(0, r.code)
      assert.is_true(r.stdout == input, "stdout differs from the input")
      assert.equals("", process.run({ "cat" }).stdout) -- no input: an empty stdin
    end)

    it("does not fail when the child does not read its input", function()
      local r = process.run({ "true" }, { input = ("x"):rep(1 << 20) })
      assert.equals(0, r.code)
    end)

    it("env replaces the environment, cwd sets the directory", function()
      assert.equals("A=1\n", process.run({ "/usr/bin/env" }, { env = { A = 1 } }).stdout)
      assert.equals("/\n", process.run({ "pwd" }, { cwd = "/" }).stdout)
    end)

    it("captures only the streams that are pipes", function()
      local r = process.run({ "sh", "-c", "echo out; echo err >&2" }, { stdout = "null" })
      assert.is_nil(r.stdout)
      assert.equals("err\n", r.stderr)
    end)

    it("a process killed by timeout raises kind timeout with the output so far, and is reaped", function()
      local t0 = tide.time()
      local kind, e = errkind(process.run, { "sh", "-c", "echo $$; exec sleep 10" }, { timeout = 0.3 })
      assert.equals("timeout", kind)
      assert.is_true(tide.time() - t0 < 2, "not killed at the timeout")
      assert.equals(0.3, e.timeout)
      assert.equals("", e.stderr)
      local pid = tonumber(e.stdout)
      assert.is_number(pid, "the output captured before the timeout is missing")
      assert.is_true(gone(pid), "the child is still there")
    end)

    it("cancelling its task kills and reaps the child", function()
      local t, pid = started(process.run, "exec sleep 10")
      assert.is_true(exists(pid))
      t:cancel()
      assert.equals("cancelled", (errkind(t.await, t)))
      assert.is_true(gone(pid), "the child is still there (running or a zombie)")
    end)

    it("a missing program raises kind process, with the errno name and the program", function()
      local kind, e = errkind(process.run, { "/no/such/program" })
      assert.equals("process", kind)
      assert.equals("ENOENT", e.code)
      assert.equals("/no/such/program", e.program)
      assert.matches("/no/such/program", e.message, 1, true)
    end)

    it("a cwd that is not a directory is blamed, not the program", function()
      local kind, e = errkind(process.run, { "pwd" }, { cwd = "/no/such/dir" })
      assert.equals("process", kind)
      assert.equals("ENOENT", e.code)
      assert.equals("/no/such/dir", e.path)
      assert.equals("cannot run 'pwd': cwd '/no/such/dir': no such file or directory (ENOENT)", e.message)
      local file = os.tmpname()
      finally(function() os.remove(file) end)
      kind, e = errkind(process.run, { "pwd" }, { cwd = file })
      assert.equals("ENOTDIR", e.code)
      assert.equals(file, e.path)
      -- a missing program in an existing cwd is still the program's fault
      kind, e = errkind(process.run, { "/no/such/program" }, { cwd = "/" })
      assert.equals("ENOENT", e.code)
      assert.is_nil(e.path)
    end)

    it("checks its arguments", function()
      raises("bad argument #1 to 'run' (table expected, got no value)", function() process.run() end)
      raises("bad argument #1 to 'run' (argv must not be empty (a program and its arguments expected, got an empty table))", function() process.run({}) end)
      -- outside a task: refused by name, before a child starts
      local got
      tide.call_soon(function() got = select(2, pcall(process.run, { "sh", "-c", "echo started >&2" })) end)
      tide.sleep(0.05)
      assert.matches("tide.process.run must be called from inside a task", tostring(got))
      raises("bad argument #1 to 'run' (argv[2]: string expected, got number)",
        function() process.run({ "echo", 1 }) end)
      raises("bad argument #2 to 'run' (unknown option 'imput')", function() process.run({ "true" }, { imput = "" }) end)
      raises("bad argument #2 to 'run' (opts.stdout: \"pipe\", \"inherit\" or \"null\" expected, got 'file')",
        function() process.run({ "true" }, { stdout = "file" }) end)
      raises("bad argument #2 to 'run' (opts.timeout: number expected, got string)",
        function() process.run({ "true" }, { timeout = "1" }) end)
      raises("bad argument #2 to 'run' (opts.timeout: positive number",
        function() process.run({ "true" }, { timeout = 0 }) end)
      raises("bad argument #2 to 'run' (opts.input needs stdin = \"pipe\")",
        function() process.run({ "cat" }, { input = "x", stdin = "null" }) end)
      raises("bad argument #2 to 'run' (opts.env: names without '='",
        function() process.run({ "true" }, { env = { "x" } }) end)
      -- exec and chdir would stop at a zero byte: another program, argument or directory
      raises("bad argument #1 to 'run' (argv[1] contains a zero byte)",
        function() process.run({ "/bin/sh\0ignored", "-c", "echo ran" }) end)
      raises("bad argument #2 to 'run' (opts.cwd contains a zero byte)",
        function() process.run({ "pwd" }, { cwd = "/tmp\0/x" }) end)
      raises("bad argument #2 to 'run' (opts.env: a name or value contains a zero byte)",
        function() process.run({ "env" }, { env = { ["A\0B"] = "1" } }) end)
      raises("bad argument #1 to 'shell' (the command line contains a zero byte)",
        function() process.shell("echo a\0b") end)
    end)
  end)

  describe("shell", function()
    it("runs the command line through /bin/sh -c", function()
      local r = process.shell("echo $((1 + 2)) | while read v; do echo \"<$v>\"; done")
      assert.same({ code = 0, stdout = "<3>\n", stderr = "" }, r)
    end)

    it("takes run's options", function()
      local r = process.shell("cat; echo \"$GREETING\"; exit 4", { input = "hi ", env = { GREETING = "there" } })
      assert.equals(4, r.code)
      assert.equals("hi there\n", r.stdout)
    end)

    it("checks its arguments", function()
      raises("bad argument #1 to 'shell' (string expected, got no value)", function() process.shell() end)
      raises("bad argument #2 to 'shell' (unknown option 'shell')", function() process.shell("true", { shell = true }) end)
    end)
  end)

  describe("spawn", function()
    it("gives the child's stdin, stdout and stderr as streams", function()
      local p <close> = process.spawn({ "sh", "-c", "while read l; do echo \"<$l>\"; done; echo done >&2" })
      p.stdin:write("a\nb\n")
      assert.equals("<a>", p.stdout:read_line())
      p.stdin:write_eof()
      assert.equals("<b>", p.stdout:read_line())
      assert.is_nil(p.stdout:read_line())
      assert.equals("done\n", p.stderr:read_until("\n"))
      assert.same({ 0, nil }, { p:wait() })
    end)

    it("says a child's stdin is write-only and its output read-only (socket errors said \"not connected\", \"broken pipe\")", function()
      local p <close> = process.spawn({ "cat" })
      local _, e = pcall(p.stdin.read, p.stdin)
      assert.equals("invalid_state", e.kind)
      assert.matches("this pipe is write-only (a child's stdin: write to it)", e.message, 1, true)
      _, e = pcall(p.stdout.write, p.stdout, "x")
      assert.equals("invalid_state", e.kind)
      assert.matches("this pipe is read-only (a child's output: read it)", e.message, 1, true)
      p.stdin:write("ok\n")
      p.stdin:close()
      assert.equals("ok\n", p.stdout:read_all())
      p:wait()
    end)

    it("stderr = \"stdout\": one stream, stdout, carries both; stderr is nil", function()
      local p <close> = process.spawn({ "sh", "-c", "echo a; echo b >&2; echo c" }, { stderr = "stdout" })
      assert.is_nil(p.stderr)
      assert.equals("a\nb\nc\n", p.stdout:read_until("c\n"))
      assert.same({ 0, nil }, { p:wait() })
    end)

    it("gives the child no descriptor from 3 up, as Python's close_fds: not even a file of io.open", function()
      local name = os.tmpname()
      local f <close> = assert(io.open(name, "w"))
      local function fds(out) -- the descriptors the child shell had, but the one ls reads
        local set = {}
        for fd in out:gmatch("%d+") do set[#set + 1] = tonumber(fd) end
        return set
      end
      local r = process.run({ "sh", "-c", "ls /proc/$$/fd" })
      assert.same({ 0, 1, 2 }, fds(r.stdout)) -- (the io.open file went to the child too)
      -- the parent's own files stay as they were: io.popen's children still get them
      local out = io.popen("for fd in /proc/$$/fd/*; do readlink $fd; done"):read("a")
      assert.truthy(out:find(name, 1, true), out)
      assert.truthy(f:write("still open"))
      os.remove(name)
    end)

    it("gives the child no descriptor from 3 up without /proc either (in a mount namespace, as root)", function()
      local tide_bin = os.getenv("TIDE_BIN")
      if not tide_bin or not os.execute("unshare -m true 2>/dev/null") then
        pending("needs TIDE_BIN and unshare -m (root)")
        return
      elseif os.execute("ldd " .. tide_bin .. " | grep -q libasan") then
        pending("the sanitizers' runtime cannot do without /proc")
        return
      end
      local script = os.tmpname()
      local out = io.open(script, "w")
      out:write([[
        local process = require("tide.process")
        local f = io.open("/dev/null") -- an inheritable descriptor of the parent
        local r = process.run({ "/bin/sh", "-c",
          "for fd in 3 4 5 6 7 8 9 10 11 12; do (: <&$fd) 2>/dev/null && printf '%s ' $fd; done" })
        io.write("[", r.stdout, "]")]])
      out:close()
      local r = process.run({ "unshare", "-m", "sh", "-c",
        "mount -t tmpfs none /proc && exec " .. tide_bin .. " " .. script })
      os.remove(script)
      assert.equals("[]", r.stdout, r.stderr) -- (it had the parent's file: no /proc, nothing done)
    end)

    it("closing stdin still delivers what write() took (a slow reader gets every byte)", function()
      local p <close> = process.spawn({ "sh", "-c", "sleep 0.2; wc -c" })
      for _ = 1, 256 do p.stdin:write(string.rep("s", 16384)) end
      p.stdin:close()
      assert.equals(256 * 16384, tonumber(p.stdout:read_all()))
      p:wait()
    end)

    it("opts.limit bounds the pipes' read_line as net's streams (64 KiB by default)", function()
      local p <close> = process.spawn({ "sh", "-c", "printf '%0100d\\nok\\n' 0" }, -- one write
        { limit = 50 })
      assert.equals("too_large", (S.errkind(p.stdout.read_line, p.stdout)))
      assert.equals("ok", p.stdout:read_line())
      p:wait()
      S.raises_matching("(opts.limit: a positive number of bytes expected, got table)",
        process.spawn, { "true" }, { limit = {} })
    end)

    it("has the child's pid, and shows its state", function()
      local p <close> = process.spawn({ "sh", "-c", "exit 7" }, { stdin = "null" })
      assert.is_true(math.type(p.pid) == "integer" and p.pid > 0)
      assert.matches("tide.Process (pid " .. p.pid .. ", running)", tostring(p), 1, true)
      p:wait()
      assert.matches("exited with 7", tostring(p), 1, true)
    end)

    it("inherit and null give no stream", function()
      local p <close> = process.spawn({ "true" }, { stdin = "null", stdout = "inherit", stderr = "null" })
      assert.is_nil(p.stdin)
      assert.is_nil(p.stdout)
      assert.is_nil(p.stderr)
      assert.equals(0, (p:wait()))
    end)

    it("a missing program raises kind process and leaves no descriptor behind", function()
      local before = fd_count()
      for _ = 1, 20 do
        local kind, e = errkind(process.spawn, { "no-such-program-here" })
        assert.equals("process", kind)
        assert.equals("ENOENT", e.code)
        assert.equals("no-such-program-here", e.program)
      end
      assert.equals(before, fd_count())
    end)

    it("100 processes leave no descriptor or process behind", function()
      local before, pids = fd_count(), {}
      for i = 1, 100 do
        local p <close> = process.spawn({ "cat" })
        p.stdin:write("x")
        p.stdin:close()
        assert.equals("x", p.stdout:read())
        p:wait()
        pids[i] = p.pid
      end
      assert.equals(before, fd_count())
      for _, pid in ipairs(pids) do assert.is_true(gone(pid)) end
    end)

    it("a child still running when its run ends is killed and reaped by then", function()
      local pid, streams
      tide.run(function()
        local p = process.spawn({ "sleep", "10" })
        pid, streams = p.pid, { p.stdin, p.stdout }
      end)
      assert.is_false(exists(pid), "the child outlived its run")
      assert.equals("closed", select(2, pcall(streams[2].read, streams[2])).kind)
    end)

    it("checks its arguments", function()
      raises("bad argument #1 to 'spawn' (table expected, got string)", function() process.spawn("ls") end)
      raises("bad argument #2 to 'spawn' (unknown option 'input')", function() process.spawn({ "cat" }, { input = "" }) end)
      raises("bad argument #2 to 'spawn' (opts.cwd: string expected, got boolean)",
        function() process.spawn({ "true" }, { cwd = true }) end)
    end)
  end)

  describe("Process:wait", function()
    it("returns code, nil after an exit; nil and the signal's name after a kill", function()
      local p <close> = process.spawn({ "sh", "-c", "exit 5" })
      assert.same({ 5, nil }, { p:wait() })
      assert.same({ 5, nil }, { p:wait() }) -- again: at once
      local q <close> = process.spawn({ "sleep", "10" })
      q:kill("SIGKILL")
      assert.same({ nil, "SIGKILL" }, { q:wait() })
      local r <close> = process.spawn({ "sleep", "10" })
      r:kill("term") -- any case, with or without SIG, as tide.signal takes names
      assert.same({ nil, "SIGTERM" }, { r:wait() })
    end)

    it("a task waiting when another closes the process returns nil, SIGKILL; a wait after is kind closed", function()
      local p = process.spawn({ "sleep", "10" })
      local w = tide.spawn(function() return p:wait() end)
      tide.sleep(0.02)
      p:close()
      assert.same({ nil, "SIGKILL" }, { w:await() })
      local ok, e = pcall(p.wait, p)
      assert.is_false(ok)
      assert.equals("closed", e.kind)
      assert.matches("attempt to use a closed process", e.message)
    end)

    it("wakes every task waiting", function()
      local p <close> = process.spawn({ "sh", "-c", "sleep 0.05; exit 2" })
      local ts = {}
      for i = 1, 3 do ts[i] = tide.spawn(p.wait, p) end
      local r = S.gather(ts)
      assert.same({ 2, 2, 2 }, { r[1], r[2], r[3] })
    end)

    it("a cancelled wait leaves the child running; it can be waited for again", function()
      local p <close> = process.spawn({ "sleep", "10" })
      local t = tide.spawn(p.wait, p)
      tide.sleep(0.01)
      t:cancel()
      assert.equals("cancelled", (errkind(t.await, t)))
      tide.sleep(0.01)
      assert.is_true(exists(p.pid))
      assert.matches("running", tostring(p))
      p:kill()
      assert.same({ nil, "SIGTERM" }, { S.await(function() return p:wait() end) })
    end)

  end)

  describe("Process:kill", function()
    it("sends SIGTERM by default, or the signal named or numbered", function()
      for sig, want in pairs({ [false] = "SIGTERM", INT = "SIGINT", SIGHUP = "SIGHUP", [9] = "SIGKILL" }) do
        local p <close> = process.spawn({ "sleep", "10" })
        assert.is_true(p:kill(sig or nil))
        assert.same({ nil, want }, { p:wait() })
      end
    end)

    it("returns false once the child has exited", function()
      local p <close> = process.spawn({ "true" })
      p:wait()
      assert.is_false(p:kill())
    end)

    it("checks its signal", function()
      local p <close> = process.spawn({ "sleep", "10" })
      raises("bad argument #1 to 'kill' (unknown signal 'SIGNOPE')", function() p:kill("SIGNOPE") end)
      raises("bad argument #1 to 'kill' (signal number from 0 to 64 expected, got 1000)", function() p:kill(1000) end)
    end)
  end)

  describe("Process:close", function()
    it("kills a running child, which is reaped; the object is then closed", function()
      local p = process.spawn({ "sleep", "10" })
      local out = p.stdout
      p:close()
      p:close() -- twice is fine
      assert.matches("closed", tostring(p))
      assert.is_true(gone(p.pid), "the child is still there")
      assert.equals("closed", (errkind(p.wait, p)))
      assert.equals("closed", select(2, pcall(out.read, out)).kind)
    end)

    it("<close> closes it at the end of the scope", function()
      local pid
      do
        local p <close> = process.spawn({ "sleep", "10" })
        pid = p.pid
      end
      assert.is_true(gone(pid))
    end)

    it("a collected process is killed and reaped", function()
      local pid = process.spawn({ "sleep", "10" }).pid
      collectgarbage()
      collectgarbage()
      assert.is_true(gone(pid))
    end)

    it("is not collected while one of its streams is kept: a pipe being read keeps its child", function()
      local function lines_of(argv) -- the Process itself is dropped here
        local out = process.spawn(argv).stdout
        return function() return out:read_line() end
      end
      local got = {}
      for line in lines_of({ "sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.05; done" }) do
        got[#got + 1] = line
        collectgarbage() -- (it was collected here, killing the child: one line)
        collectgarbage()
      end
      assert.same({ "1", "2", "3" }, got)
    end)
  end)
end)
