-- tide.http_server: a small HTTP/1.1 server on tide.net. Parsing is C
-- (tide.http.parser, libhttp-parser); this module runs one loop per
-- connection (in the connection's task): read, feed the parser, call the
-- handler for each complete request, write the response.
--
--   local srv <close> = serve(host, port, handler [, opts])
--   handler(req) -> {status =, headers = {name = value | {values}}, body =}
--                   or a string (200, text/plain)
--   req: method, url, path (as sent), query (decoded, first value wins),
--        query_all (name -> every value), raw_query, headers
--        (tide.http_headers map), body, version, keep_alive
--   opts: max_header_size (16 KiB, else 431; a longer target 414),
--         max_body_size (16 MiB, else 413; math.huge: none), idle_timeout
--         (60 s: for each read, for a whole request head, and for each
--         write a peer holds back), shutdown_timeout (5 s), linger (1 s),
--         backlog, log; checked at the call
--   srv:port(), srv:url(path), srv:close() / <close>
--
-- A body that is a function is called until it returns nil and sent as it
-- comes (chunked for HTTP/1.1, until the close for HTTP/1.0). close() stops
-- listening, closes idle keep-alive connections, lets requests in progress
-- finish (cancelled after shutdown_timeout) and, inside a task, waits for
-- every connection task to end.
local tide = require "tide"
local net = require "tide.net"
local parser = require "tide.http.parser"
local Headers = require "tide.http_headers"

local M = {}

local DEFAULTS = {
  max_header_size = 16 * 1024,
  max_body_size = 16 * 1024 * 1024,
  idle_timeout = 60,
  shutdown_timeout = 5,
  linger = 1, -- seconds to drain a peer's leftover bytes before closing
}

local decode = Headers.urldecode

-- The query's first value of each name, and every value of each name (split
-- on "&" only, as WHATWG and Python since 3.10).
local function parse_query(raw)
  local q, all = {}, {}
  for pair in raw:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k, v = decode(k), decode(v)
    if q[k] == nil then q[k], all[k] = v, { v } else all[k][#all[k] + 1] = v end
  end
  return q, all
end

local function iscancel(e)
  return tide.iserror(e) and e.kind == "cancelled"
end

local function http_date()
  return os.date("!%a, %d %b %Y %H:%M:%S GMT")
end

-- The head of a response: status line, the handler's headers (framing
-- headers are ours), then ours. extra is a flat list {name, value, ...}.
local FRAMING = { ["content-length"] = true, ["transfer-encoding"] = true,
  connection = true }

local function reason(status)
  local r = parser.reason(status)
  return r == "<unknown>" and "Unknown" or r
end

local function head(status, user, extra)
  local out = { ("HTTP/1.1 %d %s\r\n"):format(status, reason(status)) }
  local seen = {}
  for name, v in pairs(user or {}) do
    local lname = tostring(name):lower()
    seen[lname] = true
    if not FRAMING[lname] then
      for _, one in ipairs(type(v) == "table" and v or { v }) do
        out[#out + 1] = ("%s: %s\r\n"):format(name, tostring(one))
      end
    end
  end
  for i = 1, #extra, 2 do
    if not seen[extra[i]:lower()] or FRAMING[extra[i]:lower()] then
      out[#out + 1] = ("%s: %s\r\n"):format(extra[i], extra[i + 1])
    end
  end
  out[#out + 1] = "\r\n"
  return table.concat(out)
end

-- Writes data, or drops the connection (abort: nothing more is sent) when
-- the peer takes nothing for idle_timeout: its queued bytes would pin
-- memory for as long as it likes (nginx's send_timeout). Raises kind
-- "timeout" then, which ends the connection quietly.
local SLICE = 256 * 1024 -- the stream's high-water mark

-- Writes a slice. The wait is cut off only when, for idle_timeout, the peer
-- took nothing: s:queued() (libuv's queue and the kernel's send queue)
-- did not shrink. The kernel may hold megabytes and take more from libuv
-- only in big steps, so a write can wait longer than idle_timeout for a
-- peer reading steadily.
local function send_slice(srv, s, data)
  local idle = srv.opts.idle_timeout
  local last = s:queued() + #data
  local ok, err = pcall(tide.timeout, idle, s.write, s, data)
  while not ok and tide.iserror(err) and err.kind == "timeout" do
    local now = s:queued()
    if now >= last then break end -- nothing taken meanwhile
    last = now
    ok, err = pcall(tide.timeout, idle, s.drain, s)
  end
  if not ok then
    if tide.iserror(err) and (err.kind == "timeout" or err.kind == "cancelled") then
      s:abort() -- what is queued goes too: a peer that reads nothing keeps nothing
    end
    error(err, 0)
  end
end

local function send(srv, s, data)
  if #data <= SLICE then return send_slice(srv, s, data) end
  for i = 1, #data, SLICE do send_slice(srv, s, data:sub(i, i + SLICE - 1)) end
end

-- Writes what is still queued, then drains what the peer may still send
-- (so closing does not reset the connection under the response), closes.
local function finish(srv, s, linger)
  if not pcall(tide.timeout, srv.opts.idle_timeout, s.write_eof, s) then
    return s:abort()
  end
  if linger then
    pcall(tide.timeout, srv.opts.linger, function()
      while s:read() do end
    end)
  end
  s:close()
end

local function error_response(srv, s, status)
  local text = reason(status) .. "\n"
  pcall(send, srv, s, head(status, nil, { "Date", http_date(), "Server", "tide",
    "Content-Type", "text/plain; charset=utf-8", "Content-Length", #text,
    "Connection", "close" }) .. text)
end

local function report(srv, msg)
  if srv.opts.log ~= false then
    io.stderr:write("tide.http_server: ", msg, "\n")
  end
end

-- Calls fn(...) like pcall, a traceback added to errors; cancellation
-- passes through.
local function call(what, fn, ...)
  local ok, res = xpcall(fn, function(e)
    if iscancel(e) then return e end
    return debug.traceback(what .. " error: " .. tostring(e), 2)
  end, ...)
  if not ok and iscancel(res) then error(res, 0) end
  return ok, res
end

-- The answer to a handler that failed: text, as the 4xx answers.
local function internal_error()
  return { headers = { ["Content-Type"] = "text/plain; charset=utf-8" },
    body = "Internal Server Error\n" }, 500
end

-- Runs the handler; returns its response as a table and the status (500
-- for an error).
local function call_handler(srv, req)
  local ok, res = call("handler", srv.handler, req)
  if not ok then
    report(srv, res)
    return internal_error()
  end
  if type(res) == "string" then
    return { headers = { ["Content-Type"] = "text/plain; charset=utf-8" }, body = res }, 200
  end
  if type(res) ~= "table" then
    report(srv, ("handler for %s %s returned %s, not a response table or a string")
      :format(req.method, req.url, type(res)))
    return internal_error()
  end
  local status = res.status == nil and 200 or math.tointeger(res.status)
  local bad = not (status and status >= 100 and status <= 599) -- RFC 9110's classes
    and ("bad status %s"):format(tostring(res.status))
  for name, v in pairs(res.headers or {}) do
    for _, one in ipairs(type(v) == "table" and v or { v }) do
      if not tostring(name):match("^[%w!#$%%&'*+.^_`|~-]+$") or tostring(one):find("[%z\1-\8\10-\31\127]") then
        bad = ("bad header %q: %q"):format(tostring(name), tostring(one))
      end
    end
  end
  local bt = type(res.body)
  if bt ~= "nil" and bt ~= "string" and bt ~= "function" then
    bad = ("body is a %s, not a string or a function"):format(bt)
  end
  if bad then
    report(srv, ("handler for %s %s: %s"):format(req.method, req.url, bad))
    return internal_error()
  end
  return res, status
end

-- Answers one request; returns true to keep the connection open.
local function respond(srv, s, raw)
  local query, query_all = parse_query(raw.query or "")
  local req = {
    method = raw.method, url = raw.url, path = raw.path, raw_query = raw.query or "",
    query = query, query_all = query_all, headers = Headers.new(raw.headers),
    body = raw.body, version = raw.version, keep_alive = raw.keep_alive,
  }
  req.remote, req.remote_port = s:peer()
  local res, status = call_handler(srv, req)
  local body = res.body or ""
  local keep = raw.keep_alive and not raw.upgrade and not srv.closed
  local user_length -- a handler's Content-Length counts where no body is sent
  local typed = false
  for name, v in pairs(res.headers or {}) do
    local lname = tostring(name):lower()
    if lname == "connection" then
      for _, one in ipairs(type(v) == "table" and v or { v }) do
        for token in tostring(one):gmatch("[^,%s]+") do
          if token:lower() == "close" then keep = false end
        end
      end
    elseif lname == "content-type" then
      typed = true
    elseif lname == "content-length" then
      user_length = tostring(type(v) == "table" and v[1] or v):match("^%s*(%d+)%s*$")
    end
  end
  local is_head = req.method == "HEAD"
  -- 1xx, 204 and 304 have no content (RFC 9110 6.4.1): no body, nor a
  -- default type for one; 1xx and 204 no Content-Length either (8.6)
  local no_content = status < 200 or status == 204 or status == 304
  local no_length = status < 200 or status == 204
  local no_body = is_head or no_content
  if status < 200 then
    keep = false -- no final answer: the client would take the next one for it
  end
  local streamed = type(body) == "function"
  local extra = { "Date", http_date(), "Server", "tide" }
  if not typed and not no_content and (streamed or #tostring(body) > 0) then -- as aiohttp and nginx
    extra[#extra + 1], extra[#extra + 2] = "Content-Type", "application/octet-stream"
  end
  -- HEAD and 304 send no body: their Content-Length is the handler's (the
  -- size a GET would get, RFC 9110 8.6), else that of the body it gave
  local length = (is_head or status == 304) and user_length or nil
  if not streamed then
    body = tostring(body)
    if not no_length and (status ~= 304 or length) then
      extra[#extra + 1], extra[#extra + 2] = "Content-Length", length or #body
    end
  elseif length and not no_length then
    extra[#extra + 1], extra[#extra + 2] = "Content-Length", length
  elseif not no_body then
    if req.version == "1.1" then
      extra[#extra + 1], extra[#extra + 2] = "Transfer-Encoding", "chunked"
    else
      keep = false -- HTTP/1.0: the end of the body is the close
    end
  end
  if not keep then
    extra[#extra + 1], extra[#extra + 2] = "Connection", "close"
  elseif req.version == "1.0" then
    extra[#extra + 1], extra[#extra + 2] = "Connection", "keep-alive"
  end
  local h = head(status, res.headers, extra)
  if no_body or not streamed then
    if no_body or #body == 0 then
      send(srv, s, h)
    elseif #body < 65536 then
      send(srv, s, h .. body) -- one write: no Nagle delay between head and body
    else
      send(srv, s, h)
      send(srv, s, body)
    end
    return keep
  end
  send(srv, s, h)
  local chunked = req.version == "1.1"
  while true do
    local ok, chunk = call("body function", body)
    if ok and chunk ~= nil and type(chunk) ~= "string" then
      ok, chunk = false, ("body function for %s %s returned a %s, not a string or nil")
        :format(req.method, req.url, type(chunk))
    end
    if not ok then
      report(srv, chunk)
      return false -- the head is out: closing is the only way to tell
    end
    if chunk == nil then break end
    if #chunk > 0 then
      send(srv, s, chunked and ("%x\r\n%s\r\n"):format(#chunk, chunk) or chunk)
    end
  end
  if chunked then send(srv, s, "0\r\n\r\n") end
  return keep
end

-- One connection: requests in order until the peer or we close.
local function serve_conn(srv, conn)
  local s, p = conn.stream, parser.new(srv.opts)
  local idle, since = srv.opts.idle_timeout, nil
  while true do
    local pending, in_head = p:pending()
    conn.idle = not pending
    if srv.closed and conn.idle then return s:close() end
    -- the next head must come whole within idle_timeout of the last
    -- response (nginx's keepalive and client_header timeouts), however
    -- slowly its bytes trickle in, and empty lines (which the parser skips
    -- before a request) buy no time; a body gets idle_timeout per read
    if pending and not in_head then since = nil else since = since or tide.time() end
    local wait = since and since + idle - tide.time() or idle
    local ok, data = false, tide.error("timeout", "request head too slow")
    if wait > 0 then ok, data = pcall(tide.timeout, wait, s.read, s) end
    conn.idle = false
    if not ok then
      if iscancel(data) then error(data, 0) end
      return s:close() -- idle timeout, reset, or closed by srv:close()
    end
    if not data then return s:close() end
    local events = p:feed(data)
    for i, ev in ipairs(events) do
      if ev.type == "headers" then
        local expect = Headers.new(ev.request.headers).expect
        local next_ev = events[i + 1]
        if expect and expect:lower() == "100-continue" and ev.request.version == "1.1"
            and not (next_ev and next_ev.request == ev.request) then
          send(srv, s, "HTTP/1.1 100 Continue\r\n\r\n")
        end
      elseif ev.type == "request" then
        if not respond(srv, s, ev.request) then return finish(srv, s, true) end
        since = nil -- the wait for the next head starts now
      else
        error_response(srv, s, ev.status)
        return finish(srv, s, true)
      end
    end
  end
end

-- Raises as luaL_argerror would, at the first caller outside tide's modules.
local raise_at_caller = require("tide.core").raise_at_user
local argerror_at = require("tide.core").argerror

local Server = {}
Server.__index = Server
Server.__name = "tide.HttpServer"

local core_check_self = require("tide.core").check_self
local function check_self(self, fname) core_check_self(self, Server, fname) end

-- A closed server has no port to give: kind "closed", as a net server's;
-- also once its run ended, which closed the net server under it.
local function check_open(self, fname)
  check_self(self, fname)
  if self.closed or not pcall(self._net.port, self._net) then
    raise_at_caller("attempt to use a closed HTTP server", "closed")
  end
end

function Server:port()
  check_open(self, "port")
  return self._port
end

-- srv:url([path]) -> "http://host:port/path" (a path without a leading "/" gets one)
function Server:url(path)
  check_open(self, "url")
  if path ~= nil and type(path) ~= "string" then
    argerror_at("url", 1, "string expected, got " .. type(path))
  end
  if path and path:sub(1, 1) ~= "/" then path = "/" .. path end
  local host = self._host
  if host == "0.0.0.0" then host = "127.0.0.1"
  elseif host == "::" then host = "::1" end
  if host:find(":", 1, true) then host = "[" .. host .. "]" end
  return ("http://%s:%d%s"):format(host, self._port, path or "/")
end

-- Stops listening and closes idle connections; inside a task, waits until
-- every connection task has ended (requests in progress get
-- shutdown_timeout seconds, then are cancelled).
function Server:close()
  check_self(self, "close")
  if not self.closed then
    self.closed = true
    self._net:close()
  end
  for conn in pairs(self._conns) do
    if conn.idle then conn.stream:close() end -- its task wakes and ends
  end
  local me = tide.current_task()
  if not me then return end
  tide.sleep(0) -- connections accepted just before the close start first
  local tasks = {}
  for conn in pairs(self._conns) do
    if conn.task ~= me and not conn.task:done() then tasks[#tasks + 1] = conn.task end
  end
  if #tasks == 0 then return end
  local _, pending = tide.wait(tasks, { timeout = self.opts.shutdown_timeout })
  for _, t in ipairs(pending) do t:cancel("the HTTP server is closing") end
  if #pending > 0 then tide.wait(pending) end
end

Server.__close = Server.close

-- The options and what each must be: "number" (at least 0), "positive"
-- (a number above 0), "count" (an integer above 0) or "boolean".
local OPTIONS = { max_header_size = "count", max_body_size = "number",
  idle_timeout = "positive", shutdown_timeout = "number", linger = "number",
  backlog = "count", log = "boolean" }

local function argerror(n, msg) argerror_at("serve", n, msg) end

local function check_opts(opts)
  if opts ~= nil and type(opts) ~= "table" then
    argerror(4, "table expected, got " .. type(opts))
  end
  for k, v in pairs(opts or {}) do
    local want = OPTIONS[k]
    if not want then argerror(4, ("unknown option '%s'"):format(tostring(k))) end
    local ok
    if want == "boolean" then
      ok = type(v) == "boolean"
    else
      ok = type(v) == "number" and (v > 0 or (want == "number" and v == 0))
        and (want ~= "count" or math.type(v) == "integer")
    end
    if not ok then
      argerror(4, ("opts.%s: %s expected, got %s"):format(k, ({ boolean = "boolean",
        number = "a non-negative number", positive = "a positive number",
        count = "a positive integer" })[want], type(v) == "number" and tostring(v) or type(v)))
    end
  end
end

-- serve(host, port, handler [, opts]) -> server
function M.serve(host, port, handler, opts)
  if type(host) ~= "string" then argerror(1, "string expected, got " .. type(host)) end
  if type(port) ~= "number" then argerror(2, "integer expected, got " .. type(port)) end
  -- a float with an integer value will do, as for net.serve
  if not (math.tointeger(port) and port >= 0 and port <= 65535) then
    argerror(2, "port from 0 to 65535 expected, got " .. tostring(math.tointeger(port) or port))
  end
  port = math.tointeger(port)
  if type(handler) ~= "function" then argerror(3, "function expected, got " .. type(handler)) end
  check_opts(opts)
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  local srv = setmetatable({ handler = handler, opts = o, _conns = {}, _host = host,
    closed = false }, Server)
  local ok, lsn = pcall(net.serve, host, port, function(stream)
    local conn = { stream = stream, task = tide.current_task(), idle = true }
    if srv.closed then return stream:close() end
    srv._conns[conn] = true
    -- lost peers (reset, a stream closed by srv:close()) end it quietly
    local ok, err = xpcall(serve_conn, function(e)
      if tide.iserror(e) or tostring(e):find("closed stream", 1, true) then return e end
      return debug.traceback(tostring(e), 2)
    end, srv, conn)
    srv._conns[conn] = nil
    if not ok and iscancel(err) then
      stream:abort() -- cancelled (srv:close() past shutdown_timeout): nothing more goes out
      error(err, 0)
    end
    stream:close()
    if not ok then
      if not (tide.iserror(err) and (err.kind == "reset" or err.kind == "net"
          or err.kind == "timeout"))
          and not tostring(err):find("closed stream", 1, true) then
        report(srv, tostring(err))
      end
    end
  end, o.backlog and { backlog = o.backlog } or nil)
  if not ok then -- net.serve's argument errors, told at our caller's line
    if type(lsn) == "string" then
      raise_at_caller((lsn:gsub("^[^:]*:%d+: ", ""):gsub("'tide%.net%.serve'", "'serve'")))
    end
    error(lsn, 0)
  end
  srv._net, srv._port = lsn, lsn:port()
  return srv
end

return M
