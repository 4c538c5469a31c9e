-- crawl.lua: the seed's crawl, sync vs async. With no arguments it starts
-- a server in this process whose /delay answers after about 100 ms, fetches
-- 100 URLs one after another, then again through a tide.Semaphore(10), and
-- prints both times and the speed-up (about 10x).
--
-- Given URLs (as arguments, or one per line in a file given as an argument,
-- "-" for stdin) it crawls those instead, -c N at a time (default 10),
-- printing the status and size of each and a summary.
--
-- Run: tide scripts/examples/crawl.lua [-c N] [URL | FILE ...]
local tide = require "tide"
local http = require "tide.http"

local function usage(msg)
  io.stderr:write("crawl: ", msg, "\nusage: tide crawl.lua [-c N] [URL | FILE ...]\n")
  os.exit(2)
end

local function parse_args(args)
  local concurrency, urls, given = 10, {}, false
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "-c" then
      concurrency = math.tointeger(tonumber(args[i + 1]))
      if not concurrency or concurrency < 1 then usage("-c wants a positive number") end
      i = i + 1
    elseif a:match("^%a[%w+.-]*://") then
      urls[#urls + 1] = a
      given = true
    else
      local f = a == "-" and io.stdin or io.open(a)
      if not f or select(2, f:read(0)) then -- a directory opens, then fails to read
        usage("not a URL nor a readable file: " .. a)
      end
      given = true
      for line in f:lines() do
        line = line:match("^%s*(.-)%s*$")
        if line ~= "" and not line:match("^#") then urls[#urls + 1] = line end
      end
      if f ~= io.stdin then f:close() end
    end
    i = i + 1
  end
  return concurrency, urls, given
end

-- A progress bar on stderr, drawn only when stderr is a terminal.
local function progress(total)
  if not os.execute("test -t 2") then return function() end end
  local done = 0
  return function()
    done = done + 1
    local width = 40
    local filled = math.floor(width * done / total)
    io.stderr:write(("\r[%s%s] %d/%d"):format(("#"):rep(filled), ("."):rep(width - filled), done, total))
    if done == total then io.stderr:write("\r", (" "):rep(width + 20), "\r") end
  end
end

-- One URL: its status, size and time, or the error that stopped it. A
-- cancellation (Ctrl-C) is not a failed fetch: it goes on up.
local function fetch(session, url)
  local ok, res = pcall(session.get, session, url)
  if ok then
    return { url = url, status = res.status, size = #res.body, time = res.timings.total }
  end
  if tide.iserror(res) and res.kind == "cancelled" then error(res, 0) end
  return { url = url, err = tide.iserror(res) and (res.kind .. ": " .. res.message) or tostring(res) }
end

local function crawl_sequential(session, urls)
  local tick = progress(#urls)
  local results = {}
  for i, url in ipairs(urls) do
    results[i] = fetch(session, url)
    tick()
  end
  return results
end

local function crawl_concurrent(session, urls, concurrency)
  local sem = tide.Semaphore(concurrency)
  local tick = progress(#urls)
  local tasks = {}
  for i, url in ipairs(urls) do
    tasks[i] = tide.spawn(function()
      local guard <close> = sem:acquire()
      local r = fetch(session, url)
      tick()
      return r
    end)
  end
  return tide.gather(tasks)
end

local function timed(fn, ...)
  local t0 = tide.time()
  local r = fn(...)
  return tide.time() - t0, r
end

-- The first failed fetch of results, or nil.
local function first_error(results)
  for _, r in ipairs(results) do
    if r.err then return r end
  end
end

local function demo(concurrency)
  local server <close> = http.serve("127.0.0.1", 0, function(req)
    tide.sleep(0.1)
    return { status = 200, body = "page " .. (req.query.n or "?") .. "\n" }
  end)
  local urls = {}
  for n = 1, 100 do urls[n] = server:url("/delay?n=" .. n) end
  local session <close> = http.session()
  -- the demo's own server: a fetch that fails is an error, not a timing
  local function phase(crawl_all)
    local elapsed, results = timed(crawl_all, session, urls, concurrency)
    local bad = first_error(results)
    if bad then error(("crawl: %s: %s"):format(bad.url, bad.err), 0) end
    return elapsed
  end
  local sync = phase(crawl_sequential)
  print(("one after another: %d URLs in %.2f s"):format(#urls, sync))
  local async = phase(crawl_concurrent)
  print(("concurrently, %d at a time: %d URLs in %.2f s"):format(concurrency, #urls, async))
  print(("speed-up: %.1fx"):format(sync / async))
end

local function crawl(concurrency, urls)
  local session <close> = http.session()
  local elapsed, results = timed(crawl_concurrent, session, urls, concurrency)
  local ok, failed, bytes = 0, 0, 0
  for _, r in ipairs(results) do
    if r.err then
      failed = failed + 1
      print(("ERR  %s  %s"):format(r.url, r.err))
    else
      ok = ok + 1
      bytes = bytes + r.size
      print(("%d  %8d B  %6.3f s  %s"):format(r.status, r.size, r.time, r.url))
    end
  end
  print(("%d URLs, %d at a time: %d answered, %d failed, %d bytes in %.2f s"):format(
    #urls, concurrency, ok, failed, bytes, elapsed))
end

local concurrency, urls, given = parse_args({ ... })
tide.run(function()
  if not given then
    demo(concurrency)
  else
    crawl(concurrency, urls)
  end
end)
