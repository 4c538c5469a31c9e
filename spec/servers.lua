-- Test servers for the HTTP client specs, independent of tide: an httpbin-like
-- Python server (spec/servers/httpbin.py, stdlib only) and nginx with TLS and
-- HTTP/2. Required from specs as `require "spec.servers"`; not a spec itself.
--
-- Everything listens on 127.0.0.1 on a free port. Start servers from inside a
-- tide task (every busted test is one) under the real clock: waiting for a
-- server to come up polls with tide.sleep(0.02).
--
-- Cleanup: each server process is started with io.popen(cmd, "w"), so its
-- stdin is a pipe from this process. httpbin.py exits when its stdin reaches
-- EOF; nginx runs in the foreground under spec/servers/run_until_eof.py,
-- which stops nginx when its stdin reaches EOF. So closing the pipe (close()),
-- or this process ending in any way, even killed, stops the server. close()
-- also kills the server by pid first, so that it works even if some other
-- child process inherited a copy of the pipe (os.execute("cmd &")). Both
-- close every inherited file descriptor beyond stdio on start, so they never
-- keep tide's sockets alive. Each server's temp dir is removed by close(), by
-- a __gc when the Lua state closes, and by the child process itself when it
-- stops on EOF (so also when this process is killed).
--
-- API
--   servers.httpbin() -> hb   (one instance per process, memoized)
--     hb.port          main port (its TCP connections are counted in /stats)
--     hb.control_port  same endpoints, connections not counted
--     hb.base          "http://127.0.0.1:PORT"
--     hb.url(path)     hb.base .. path ("/get" -> "http://127.0.0.1:PORT/get");
--                      hb:url(path) works too
--     hb.stats()       -> {connections_total, connections_open,
--                      max_connections_open, requests_total} (integers), read
--                      over the control port (not counted)
--     hb.reset_stats() -> stats after the reset: total and requests_total 0,
--                      max_connections_open = connections_open
--     hb.wait_stats(pred [, timeout = 5]) -> stats: polls stats() (every 20 ms) until
--                      pred(stats) is true; raises with the last stats on timeout
--     hb.close()       optional: stops it; a later httpbin() starts a new one
--   servers.cert(dir) -> {cert = dir.."/cert.pem", key = dir.."/key.pem"}:
--     a self-signed RSA 2048 certificate (no CA) for CN=localhost with
--     subjectAltName DNS:localhost, IP:127.0.0.1, valid 2 days. The cert file
--     is what a client takes as `cafile`.
--   servers.nginx(opts) -> ng   opts (all optional):
--       tls = true        HTTPS with a fresh servers.cert
--       h2 = tls          HTTP/2 (with tls: ALPN h2 and http/1.1; without tls:
--                         h2c with prior knowledge ONLY, HTTP/1.1 fails)
--       big_size = 1048576  size of /big
--       httpbin = false   true: proxy /httpbin/... to servers.httpbin()'s
--                         /... (HTTP/1.1 upstream, unbuffered both ways)
--       extra = nil       config text added inside the server block
--     Routes: "/" -> 200 "ok" (text/plain, 2 bytes); "/big" -> big_size
--     bytes of servers.pattern(); "/file/small.txt" -> "hello\n".
--     ng.port, ng.scheme ("https"/"http"), ng.base, ng.url(path) (like hb)
--     ng.cafile        the cert file (nil without tls); ng.cert, ng.key
--     ng.dir           its temp dir; ng.access_log, ng.error_log (paths)
--     ng.big_size
--     ng.log()         -> list of {connection =, requests =, protocol =,
--                      status =, uri =} per finished request (connection,
--                      requests, status are numbers; protocol "HTTP/1.1"
--                      or "HTTP/2.0")
--     ng.connections() -> number of distinct connections in the access log
--     ng.close()       stops nginx (waits until it is gone), removes ng.dir
--   servers.pattern(n) -> the n bytes /bytes/n, /stream-bytes/n and /big
--     serve: byte i (0-based) is i % 256.
--   servers.free_port() -> a port that was free a moment ago (racy).
--
-- httpbin endpoints (JSON bodies unless said; see spec/servers/httpbin.py):
--   /get, /anything[/...] (any method): an echo {method, path (without the
--     query), target (request-target as sent), http_version, query = {name =
--     {values...}} (always lists), headers = {lowercased name = value}
--     (repeated headers joined with ", "), raw_headers = {{name, value}, ...}
--     (as sent), body (text; base64 if not UTF-8, see body_encoding),
--     body_encoding ("utf-8"/"base64"), body_length, json (parsed when the
--     content-type has "json", else null), form ({name = {values}} for
--     application/x-www-form-urlencoded, else null)}
--   /status/<code> (200..599): that status, {"status": code} (no body for
--     204/304)
--   /redirect/<n>: 302, Location /redirect/<n-1> ... /redirect/1 -> /get;
--     ?absolute=1 uses absolute URLs (from the Host header)
--   /redirect-to?url=U[&status=302]: that status with Location U (any method)
--   /loop: 302 to /loop forever
--   /delay/<seconds> (float): waits, then the echo plus "delay"; if the client
--     goes meanwhile it just closes
--   /bytes/<n>: n bytes of pattern(n), application/octet-stream
--   /stream-bytes/<n>?chunk=1024&delay=0: pattern(n), chunked, chunk bytes per
--     chunk, delay seconds between chunks
--   /reset?after=1000&delay=0.1: Content-Length 100000, `after` bytes of the
--     pattern, waits `delay`, then resets the connection (RST)
--   /close: closes the connection without a response
--   /hang: sends nothing; its thread ends when the client closes (max 300 s)
--   /cookies/set?a=1&b=2: one Set-Cookie "a=1; Path=/" per parameter,
--     {"cookies": {a = "1", b = "2"}}; /cookies/delete?a: Set-Cookie
--     "a=; Path=/; Max-Age=0"; /cookies: {"cookies": {...}} from Cookie
--   /headers-repeat: Set-Cookie a=1 and b=2, X-Multi one and two
--   /gzip, /deflate: Content-Encoding gzip/deflate (zlib), whatever the
--     request's Accept-Encoding; the echo plus "gzipped"/"deflated": true
--   /stats: {connections_total, connections_open, max_connections_open,
--     requests_total} for the main port (a /stats request on the main port
--     counts itself); /stats/reset: resets, then the same
--   anything else: 404 {"error": "not found", path}
local tide = require "tide"

local M = {}

local PYTHON = "/usr/bin/python3"
local NGINX = "/usr/sbin/nginx"
local OPENSSL = "/usr/bin/openssl"

local HERE = (function() -- absolute path of spec/servers
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then
    local p = io.popen("pwd")
    local cwd = p and p:read("l")
    if p then p:close() end
    if cwd then dir = cwd .. "/" .. dir:gsub("^%./", ""):gsub("^%.$", "") end
  end
  return (dir:gsub("/$", "")) .. "/servers"
end)()

local function q(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

local function run(cmd)
  local ok, how, code = os.execute(cmd)
  if not ok then
    error(("command failed (%s %s): %s"):format(how, code, cmd), 2)
  end
end

local function mktemp(prefix)
  local p = assert(io.popen("mktemp -d /tmp/" .. prefix .. ".XXXXXX"))
  local dir = p:read("l")
  p:close()
  assert(dir and dir:match("^/tmp/[%w._-]+$"), "mktemp -d failed")
  return dir
end

local function rmdir(dir)
  if dir and dir:match("^/tmp/[%w._-]+$") then os.execute("rm -rf " .. q(dir)) end
end

-- Sleeps a little without blocking the loop (falls back to `sleep 0.02` when not
-- called from a task).
local function pause()
  if tide.current_task() then
    tide.sleep(0.02)
  else
    os.execute("sleep 0.02")
  end
end

-- Polls check() until it returns a truthy value (returned) or timeout seconds
-- pass (then returns nil). Wall time is measured with os.time() too, so a
-- virtual clock cannot end the wait early.
local function poll(check, timeout)
  local t0, w0 = tide.time(), os.time()
  while true do
    local v = check()
    if v then return v end
    if tide.time() - t0 > timeout and os.time() - w0 >= timeout then return nil end
    pause()
  end
end

function M.pattern(n)
  local block = {}
  for i = 0, 255 do block[#block + 1] = string.char(i) end
  block = table.concat(block)
  return block:rep(n // 256 + 1):sub(1, n)
end

function M.free_port()
  if tide.current_task() then
    local net = require "tide.net"
    local srv = net.serve("127.0.0.1", 0, function(s) s:close() end)
    local port = srv:port()
    srv:close()
    return port
  end
  local p = assert(io.popen(PYTHON .. [[ -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']]))
  local port = tonumber(p:read("a"))
  p:close()
  return port
end

local function url_fn(base)
  return function(a, b)
    local path = type(a) == "table" and b or a -- x.url(p) and x:url(p)
    path = path or "/"
    if path:sub(1, 1) ~= "/" then path = "/" .. path end
    return base .. path
  end
end

-- Closes instances left open when the Lua state closes (pipes would close
-- anyway at exit; this also removes the temp dirs).
local function autoclose(obj)
  return setmetatable(obj, { __gc = function(o) pcall(o.close) end })
end

---------------------------------------------------------------------------
-- httpbin

-- One GET over the control port (tide.net, Connection: close); returns status, body.
local function control_get(port, path)
  local net = require "tide.net"
  local s = net.connect("127.0.0.1", port)
  s:write(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"):format(path, port))
  local parts = {}
  while true do
    local d = s:read()
    if not d then break end
    parts[#parts + 1] = d
  end
  s:close()
  local resp = table.concat(parts)
  local status = tonumber(resp:match("^HTTP/1%.%d (%d%d%d)"))
  local body = resp:match("\r\n\r\n(.*)$")
  return status, body
end

local function parse_stats(body)
  local st = {}
  for k, v in (body or ""):gmatch('"([%w_]+)":%s*(%-?%d+)') do st[k] = tonumber(v) end
  assert(st.connections_total, "bad /stats reply: " .. tostring(body))
  return st
end

local httpbin_instance

function M.httpbin()
  if httpbin_instance and not httpbin_instance.closed then return httpbin_instance end
  local dir = mktemp("tide-httpbin")
  local portfile = dir .. "/port"
  local cmd = ("exec %s %s %s %s 2>%s"):format(PYTHON, q(HERE .. "/httpbin.py"), q(portfile),
    q(dir), q(dir .. "/stderr.log"))
  local pipe = assert(io.popen(cmd, "w"))
  local ports = poll(function()
    local s = read_file(portfile)
    return s and s:match("^%d+ %d+ %d+\n")
  end, 5)
  if not ports then
    pipe:close()
    local log = read_file(dir .. "/stderr.log") or ""
    rmdir(dir)
    error("spec.servers: httpbin.py did not write its port file within 5 s\n" .. log, 2)
  end
  local port, control, pid = ports:match("^(%d+) (%d+) (%d+)")
  port, control = tonumber(port), tonumber(control)
  local hb = { port = port, control_port = control, pid = tonumber(pid), dir = dir }
  hb.base = "http://127.0.0.1:" .. port
  hb.url = url_fn(hb.base)
  function hb.stats()
    local status, body = control_get(control, "/stats")
    assert(status == 200, "httpbin /stats failed: " .. tostring(status))
    return parse_stats(body)
  end
  function hb.reset_stats()
    local status, body = control_get(control, "/stats/reset")
    assert(status == 200, "httpbin /stats/reset failed: " .. tostring(status))
    return parse_stats(body)
  end
  function hb.wait_stats(pred, timeout)
    local last
    local ok = poll(function()
      last = hb.stats()
      return pred(last)
    end, timeout or 5)
    if not ok then
      local t = {}
      for k, v in pairs(last) do t[#t + 1] = k .. "=" .. v end
      table.sort(t)
      error("httpbin stats never matched; last: " .. table.concat(t, " "), 2)
    end
    return last
  end
  function hb.close()
    if hb.closed then return end
    hb.closed = true
    -- EOF on its stdin ends it; the kill too, in case a child process of
    -- ours (os.execute("x &")) inherited the pipe. pclose waits for it.
    os.execute("kill " .. hb.pid .. " 2>/dev/null")
    pipe:close()
    rmdir(dir)
  end
  httpbin_instance = autoclose(hb)
  return hb
end

---------------------------------------------------------------------------
-- certificate

function M.cert(dir)
  local cert, key = dir .. "/cert.pem", dir .. "/key.pem"
  run(("%s req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost"
    .. " -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1'"
    .. " -keyout %s -out %s >%s 2>&1"):format(OPENSSL, q(key), q(cert), q(dir .. "/openssl.log")))
  return { cert = cert, key = key }
end

---------------------------------------------------------------------------
-- nginx

local function fill(template, vars)
  return (template:gsub("{{([%w_]+)}}", function(k)
    local v = vars[k]
    if v == nil then error("nginx template: no value for " .. k) end
    return tostring(v)
  end))
end

function M.nginx(opts)
  opts = opts or {}
  local tls = opts.tls ~= false
  local h2 = opts.h2
  if h2 == nil then h2 = tls end
  local big_size = opts.big_size or 1024 * 1024
  local template = assert(read_file(HERE .. "/nginx.conf.in"), "missing nginx.conf.in")

  local dir = mktemp("tide-nginx")
  local ok, res = pcall(function()
    run(("mkdir -p %s/www %s/tmp"):format(q(dir), q(dir)))
    write_file(dir .. "/www/big.bin", M.pattern(big_size))
    write_file(dir .. "/www/small.txt", "hello\n")
    local ng = { dir = dir, big_size = big_size, scheme = tls and "https" or "http",
      access_log = dir .. "/access.log", error_log = dir .. "/error.log" }
    local tls_conf = ""
    if tls then
      local c = M.cert(dir)
      ng.cert, ng.key, ng.cafile = c.cert, c.key, c.cert
      tls_conf = ("        ssl_certificate %s;\n        ssl_certificate_key %s;\n"
        .. "        ssl_protocols TLSv1.2 TLSv1.3;\n"):format(c.cert, c.key)
    end
    local proxy = ""
    if opts.httpbin then
      ng.httpbin = M.httpbin()
      proxy = ([[
        location /httpbin/ {
            proxy_pass http://127.0.0.1:%d/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }
]]):format(ng.httpbin.port)
    end
    if opts.extra then proxy = proxy .. opts.extra .. "\n" end
    local flags = (tls and " ssl" or "") .. (h2 and " http2" or "")

    local last_err
    for _ = 1, 5 do -- the port may be taken between free_port() and nginx
      local port = M.free_port()
      write_file(dir .. "/nginx.conf", fill(template, { DIR = dir, PORT = port,
        LISTEN_FLAGS = flags, TLS = tls_conf, PROXY = proxy, BIG_SIZE = big_size }))
      os.remove(dir .. "/status")
      os.remove(dir .. "/error.log")
      local cmd = ("exec %s %s --cleanup-if %s %s %s %s -p %s -c %s -e %s >>%s 2>&1"):format(
        PYTHON, q(HERE .. "/run_until_eof.py"), q(dir .. "/nginx.pid"), q(dir),
        q(dir .. "/status"), NGINX, q(dir .. "/"),
        q(dir .. "/nginx.conf"), q(dir .. "/error.log"), q(dir .. "/stderr.log"))
      local pipe = assert(io.popen(cmd, "w"))
      local state = poll(function()
        local pid = read_file(dir .. "/nginx.pid")
        if pid and pid:match("%d+\n") then return "up" end
        if read_file(dir .. "/status") then return "exited" end
        -- nginx retries bind() for 2.5 s before giving up: do not wait.
        local log = read_file(dir .. "/error.log") or ""
        if log:find("Address already in use", 1, true) then return "taken" end
      end, 5)
      if state == "up" then
        ng.port = port
        ng.base = ("%s://127.0.0.1:%d"):format(ng.scheme, port)
        ng.url = url_fn(ng.base)
        function ng.close()
          if ng.closed then return end
          ng.closed = true
          -- Kill nginx by pid (run_until_eof.py then exits too) so that close
          -- works even if a child process of ours inherited the pipe; else the
          -- pipe's EOF makes run_until_eof.py stop it. pclose waits for that.
          local pid = tonumber((read_file(dir .. "/nginx.pid") or ""):match("%d+"))
          if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
          pipe:close()
          rmdir(dir)
        end
        return ng
      end
      pipe:close()
      last_err = (read_file(dir .. "/error.log") or "") .. (read_file(dir .. "/stderr.log") or "")
      if state == nil or not last_err:find("Address already in use", 1, true) then
        break
      end
    end
    error("spec.servers: nginx did not start\n" .. (last_err or ""), 0)
  end)
  if not ok then
    rmdir(dir)
    error(res, 2)
  end
  local ng = res

  function ng.log()
    local entries = {}
    for line in (read_file(ng.access_log) or ""):gmatch("[^\n]+") do
      local c, n, proto, status, uri = line:match("^(%d+) (%d+) (%S+) (%d+) (.*)$")
      if c then
        entries[#entries + 1] = { connection = tonumber(c), requests = tonumber(n),
          protocol = proto, status = tonumber(status), uri = uri }
      end
    end
    return entries
  end

  local function count_connections()
    local seen, n = {}, 0
    for _, e in ipairs(ng.log()) do
      if not seen[e.connection] then seen[e.connection], n = true, n + 1 end
    end
    return n
  end

  -- nginx logs a request after its response went out, so a count taken
  -- right after a response can miss it on a loaded machine: count until
  -- two reads 50 ms apart agree (at most 2 s).
  function ng.connections()
    local n = count_connections()
    for _ = 1, 40 do
      tide.sleep(0.05)
      local again = count_connections()
      if again == n then return n end
      n = again
    end
    return n
  end

  return autoclose(ng)
end

return M
