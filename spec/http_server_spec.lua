-- Specs for tide.http_server (http.serve) and its C parser tide.http.parser.
-- The server is driven with raw tide.net connections: each test writes a
-- request by hand and reads the response with the small reader below. One
-- test runs curl against a server in a separate tide process (io.popen
-- blocks this loop, so curl must not talk to a server in this process).
local tide = require "tide"
local net = require "tide.net"
local http = require "tide.http_server"
local parser = require "tide.http.parser"
local S = require "spec.support"

-- Reads one response: {status, reason, version, headers (lower-case names),
-- body}; body read by Content-Length, chunked, or to the end (until_close).
-- opts.head: no body (a HEAD answer). Times out after 2 s so a hang fails.
local function read_response(c, opts)
  opts = opts or {}
  return tide.timeout(opts.timeout or 2, function()
    local line = c:read_line()
    if not line then return nil end
    local version, status, reason = line:match("^HTTP/(%d%.%d) (%d%d%d) ?(.*)$")
    assert(status, "bad status line: " .. line)
    local r = { status = tonumber(status), reason = reason, version = version, headers = {} }
    for l in function() return c:read_line() end do
      if l == "" then break end
      local k, v = l:match("^([^:]+):%s*(.-)%s*$")
      assert(k, "bad header line: " .. l)
      assert(r.headers[k:lower()] == nil, "header sent twice: " .. k)
      r.headers[k:lower()] = v
    end
    local len = tonumber(r.headers["content-length"])
    if opts.head or r.status < 200 or r.status == 204 or r.status == 304 then
      r.body = ""
    elseif r.headers["transfer-encoding"] == "chunked" then
      local parts = {}
      while true do
        local size = tonumber(c:read_line(), 16)
        if size == 0 then
          assert(c:read_line() == "", "no CRLF after the last chunk")
          break
        end
        parts[#parts + 1] = c:read_exactly(size)
        if opts.on_chunk then opts.on_chunk(parts[#parts]) end
        assert(c:read_line() == "", "no CRLF after a chunk")
      end
      r.body = table.concat(parts)
    elseif len then
      r.body = len > 0 and c:read_exactly(len) or ""
    else
      local parts = {}
      for d in function() return c:read() end do parts[#parts + 1] = d end
      r.body = table.concat(parts)
    end
    return r
  end)
end

-- Reads to the end of the stream (nil when the server closed): must come
-- within 2 s.
local function read_eof(c)
  return tide.timeout(2, c.read, c)
end

-- An echo handler: answers with what it saw.
local function echo(req)
  return {
    status = 200,
    headers = { ["Content-Type"] = "text/plain", ["X-Method"] = req.method },
    body = ("%s %s %s [%s]"):format(req.method, req.path, req.version, req.body),
  }
end

local function start(handler, opts)
  local srv = http.serve("127.0.0.1", 0, handler or echo, opts)
  return srv, net.connect("127.0.0.1", srv:port())
end

local function get(path, extra)
  return "GET " .. path .. " HTTP/1.1\r\nHost: test\r\n" .. (extra or "") .. "\r\n"
end

local function others()
  local n = 0
  for _, t in ipairs(tide.all_tasks()) do
    if t ~= tide.current_task() then n = n + 1 end
  end
  return n
end

describe("tide.http.parser", function()
  describe("parser.new / p:feed", function()
    it("gives the head, then the whole request, for requests fed byte by byte", function()
      local p = parser.new()
      local s = "POST /a/b?x=1 HTTP/1.1\r\nHost: h\r\nX-Long-Name: some value\r\n" ..
        "Content-Length: 3\r\n\r\nabc"
      local events = {}
      for i = 1, #s do
        for _, e in ipairs(p:feed(s:sub(i, i))) do events[#events + 1] = e end
        if i < #s then assert.is_true(p:pending()) end
      end
      assert.equals(2, #events)
      assert.equals("headers", events[1].type)
      assert.equals("request", events[2].type)
      local r = events[2].request
      assert.equals(events[1].request, r)
      assert.equals("POST", r.method)
      assert.equals("/a/b?x=1", r.url)
      assert.equals("/a/b", r.path)
      assert.equals("x=1", r.query)
      assert.equals("1.1", r.version)
      assert.same({ "Host", "h", "X-Long-Name", "some value", "Content-Length", "3" }, r.headers)
      assert.equals("abc", r.body)
      assert.equals(3, r.content_length)
      assert.is_true(r.keep_alive)
      assert.is_false(p:pending())
    end)

    it("gives pipelined requests in order, decodes chunked bodies, keeps empty values", function()
      local p = parser.new()
      local ev = p:feed(get("/1", "X-Empty:\r\n") ..
        "POST /2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n" ..
        "GET /3 HTTP/1.0\r\n\r\n")
      local reqs = {}
      for _, e in ipairs(ev) do
        if e.type == "request" then reqs[#reqs + 1] = e.request end
      end
      assert.equals(6, #ev)
      assert.same({ "/1", "/2", "/3" }, { reqs[1].path, reqs[2].path, reqs[3].path })
      assert.same({ "Host", "test", "X-Empty", "" }, reqs[1].headers)
      assert.equals("abcde", reqs[2].body)
      assert.is_true(reqs[2].chunked)
      assert.is_false(reqs[3].keep_alive)
    end)

    it("reads a chunked body's framing strictly: a bare LF, CR without LF or control bytes is a 400, nothing smuggled", function()
      local head = "POST /front HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      local hidden = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
      local bad = {
        "2;\nxx\r\n" .. ("%x"):format(#hidden) .. "\r\n" .. hidden .. "\r\n0\r\n\r\n", -- bare LF
        "3\rXabc\r\n0\r\n\r\n", -- CR then any byte
        "3\r\nabcZZ0\r\n\r\n", -- two bytes that are not CRLF after the data
        "3;\0\1\r\nabc\r\n0\r\n\r\n", -- control bytes in an extension
        "0\rX\r\n", -- the last chunk likewise
        "0\r\nX-T: 1\n\r\n", -- a trailer line ending in a bare LF
      }
      local ev
      for i, body in ipairs(bad) do
        for _, split in ipairs({ false, true }) do -- whole, and a byte at a time
          local p = parser.new()
          local data = head .. body
          ev = {}
          if split then
            for c in data:gmatch(".") do for _, e in ipairs(p:feed(c)) do ev[#ev + 1] = e end end
          else
            ev = p:feed(data)
          end
          local types = {}
          for _, e in ipairs(ev) do types[#types + 1] = e.type .. (e.status and (" " .. e.status) or "") end
          assert.same({ "headers", "error 400" }, types, ("case %d%s"):format(i, split and " split" or ""))
        end
      end
      ev = parser.new():feed(head .. "0000000000000000003\r\nabc\r\n00000000000000000000\r\n\r\n")
      assert.same({ "headers", "request" }, { ev[1].type, ev[2].type }) -- leading zeros are no size
      assert.equals("abc", ev[2].request.body)
      ev = parser.new():feed("CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\nTransfer-Encoding: chunked\r\n\r\n\22\3\1")
      assert.equals("request", ev[2].type) -- a CONNECT has no body: what follows is the tunnel's
      ev = parser.new():feed(head .. "3 ; name=val\r\nabc\r\n2;x\r\nde\r\n0\r\nX-T: 1\r\n\r\n" .. get("/next"))
      assert.same({ "headers", "request", "headers", "request" }, { ev[1].type, ev[2].type, ev[3].type, ev[4].type })
      assert.equals("abcde", ev[2].request.body)
      assert.equals("/next", ev[4].request.path)
    end)

    it("reports garbage (400), big heads (431) and big bodies (413) distinctly", function()
      local e = parser.new():feed("garbage\r\n\r\n")[1]
      assert.same({ "error", 400 }, { e.type, e.status })
      assert.equals("HPE_INVALID_METHOD", e.errno)
      e = parser.new({ max_header_size = 100 }):feed(get("/", "X: " .. ("x"):rep(200) .. "\r\n"))[1]
      assert.same({ "error", 431 }, { e.type, e.status })
      e = parser.new({ max_body_size = 10 }):feed("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")[1]
      assert.same({ "error", 413 }, { e.type, e.status })
      local p = parser.new({ max_body_size = 4 })
      local ev = p:feed("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n")
      assert.same({ "headers", "error" }, { ev[1].type, ev[2].type })
      assert.equals(413, ev[2].status)
      assert.same({}, p:feed(get("/"))) -- a failed parser takes no more
    end)

    it("parser.reason gives reason phrases", function()
      assert.equals("Not Found", parser.reason(404))
      assert.equals("Request Header Fields Too Large", parser.reason(431))
    end)
  end)
end)

describe("tide.http_server", function()
  describe("serve", function()
    it("decodes the path, the query and the headers of a GET", function()
      local seen
      local srv, c = start(function(req)
        seen = req
        return "hello"
      end)
      c:write(get("/search?q=a+b%26c&x=1&x=2&e=&caf%C3%A9=%E2%82%AC", "X-Token: Abc\r\n"))
      local r = read_response(c)
      assert.equals(200, r.status)
      assert.equals("hello", r.body)
      assert.matches("^text/plain", r.headers["content-type"])
      assert.equals("5", r.headers["content-length"])
      assert.equals("GET", seen.method)
      assert.equals("/search", seen.path)
      assert.equals("q=a+b%26c&x=1&x=2&e=&caf%C3%A9=%E2%82%AC", seen.raw_query)
      assert.same({ q = "a b&c", x = "1", e = "", ["café"] = "€" }, seen.query) -- the first, as headers
      assert.same({ "1", "2" }, seen.query_all.x)
      assert.same({ "€" }, seen.query_all["café"])
      assert.equals("Abc", seen.headers["x-token"])
      assert.equals("Abc", seen.headers["X-TOKEN"])
      assert.equals("1.1", seen.version)
      assert.equals("", seen.body)
      assert.equals("127.0.0.1", seen.remote)
      assert.is_true(seen.remote_port > 0)
      c:close()
      srv:close()
    end)

    it("gives req.remote and req.remote_port of a client that reset right after sending", function()
      local seen = tide.Event()
      local remote, remote_port
      local srv = http.serve("127.0.0.1", 0, function(req)
        remote, remote_port = req.remote, req.remote_port
        seen:set()
        return "late"
      end, { log = false })
      local py = io.popen(([[python3 -c '
import socket, struct, sys, time
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
time.sleep(0.2); c.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
' %d]]):format(srv:port()))
      tide.wait_for(function() seen:wait() end, 5) -- python starts slowly
      py:close()
      assert.equals("127.0.0.1", remote)
      assert.is_true(remote_port > 0)
      srv:close()
    end)

    it("passes a POST body, and a chunked request body decoded", function()
      local srv, c = start()
      c:write("POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world")
      local r = read_response(c)
      assert.equals("POST /p 1.1 [hello world]", r.body)
      assert.equals("POST", r.headers["x-method"])
      c:write("PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
      tide.sleep(0.01)
      c:write("5\r\nhello\r\n")
      tide.sleep(0.01)
      c:write("6\r\n world\r\n0\r\n\r\n")
      r = read_response(c)
      assert.equals("PUT /c 1.1 [hello world]", r.body)
      c:close()
      srv:close()
    end)

    it("answers a plain string return with 200 text/plain, and sets status and headers", function()
      local srv, c = start(function(req)
        if req.path == "/s" then return "text" end
        return { status = 201, headers = { ["X-A"] = "1", ["Set-Cookie"] = { "a=1", "b=2" } } }
      end)
      c:write(get("/s"))
      local r = read_response(c)
      assert.same({ 200, "OK", "text" }, { r.status, r.reason, r.body })
      c:write(get("/t"))
      local raw = tide.timeout(2, c.read_until, c, "\r\n\r\n")
      assert.matches("^HTTP/1.1 201 Created\r\n", raw)
      assert.matches("\r\nX%-A: 1\r\n", raw)
      assert.matches("\r\nSet%-Cookie: a=1\r\nSet%-Cookie: b=2\r\n", raw)
      assert.matches("\r\nContent%-Length: 0\r\n", raw)
      c:close()
      srv:close()
    end)

    it("runs the handler in the connection's task: handlers may sleep, connections run concurrently", function()
      local srv = http.serve("127.0.0.1", 0, function(req)
        tide.sleep(0.3)
        return req.path
      end)
      local t0 = tide.time()
      local r = tide.gather(function()
        local c <close> = net.connect("127.0.0.1", srv:port())
        c:write(get("/a"))
        return read_response(c).body
      end, function()
        local c <close> = net.connect("127.0.0.1", srv:port())
        c:write(get("/b"))
        return read_response(c).body
      end)
      assert.same({ "/a", "/b" }, { r[1], r[2] })
      assert.is_true(tide.time() - t0 < 0.5, "the two requests were not served concurrently")
      srv:close()
    end)

    it("srv:port(), srv:url(path) and <close>", function()
      local port
      do
        local srv <close> = http.serve("127.0.0.1", 0, echo)
        port = srv:port()
        assert.is_true(port > 0)
        assert.equals("http://127.0.0.1:" .. port .. "/x?y=1", srv:url("/x?y=1"))
      end
      local ok, e = pcall(net.connect, "127.0.0.1", port)
      assert.is_false(ok)
      assert.equals("connect", e.kind)
    end)

    it("srv:port() and srv:url() after srv:close() raise kind closed, as a net server's port()", function()
      local srv = http.serve("127.0.0.1", 0, echo)
      srv:close()
      for _, method in ipairs({ "port", "url" }) do
        local kind, e = S.errkind(function() return srv[method](srv) end)
        assert.equals("closed", kind, method)
        assert.matches("closed HTTP server", e.message)
      end
    end)

    it("srv:port() raises kind closed once the run that started the server has ended", function()
      local srv = tide.run(function() return http.serve("127.0.0.1", 0, echo) end)
      assert.equals("closed", (S.errkind(function() return srv:port() end)))
    end)

    it("listens on a host name", function()
      local srv <close> = http.serve("localhost", 0, function() return "named" end)
      assert.equals(("http://localhost:%d/x"):format(srv:port()), srv:url("/x"))
      local c <close> = net.connect("127.0.0.1", srv:port())
      c:write(get("/"))
      assert.equals("named", read_response(c).body)
    end)

    it("checks its arguments", function()
      assert.has_error(function() http.serve("127.0.0.1", 0, "nope") end,
        "bad argument #3 to 'serve' (function expected, got string)")
      assert.has_error(function() http.serve("127.0.0.1", 0, echo, 5) end,
        "bad argument #4 to 'serve' (table expected, got number)")
      local function raises_here(text, ...)
        local args = table.pack(...)
        local e = S.raises_matching(text, function()
          local srv = http.serve(table.unpack(args, 1, args.n)) -- this line, not the server's
          return srv
        end)
        assert.truthy(e:find("^spec/http_server_spec%.lua:%d+: bad argument"), e)
      end
      raises_here("bad argument #4 to 'serve' (opts.max_body_size: a non-negative number expected, got string)",
        "127.0.0.1", 0, echo, { max_body_size = "big" })
      raises_here("bad argument #4 to 'serve' (opts.idle_timeout: a positive number expected, got 0)",
        "127.0.0.1", 0, echo, { idle_timeout = 0 })
      raises_here("bad argument #4 to 'serve' (opts.log: boolean expected, got string)",
        "127.0.0.1", 0, echo, { log = "no" })
      raises_here("bad argument #4 to 'serve' (unknown option 'max_body')", "127.0.0.1", 0, echo, { max_body = 1 })
      raises_here("bad argument #2 to 'serve' (integer expected, got string)", "127.0.0.1", "80", echo)
      raises_here("bad argument #2 to 'serve' (port from 0 to 65535 expected, got 70000)", "127.0.0.1", 70000, echo)
      raises_here("bad argument #2 to 'serve' (port from 0 to 65535 expected, got -1)", "127.0.0.1", -1.0, echo)
      raises_here("bad argument #2 to 'serve' (port from 0 to 65535 expected, got 80.5)", "127.0.0.1", 80.5, echo)
      local srv <close> = http.serve("127.0.0.1", 0.0, echo) -- a float with an integer value, as net.serve takes it
      assert.equals("integer", math.type(srv:port()))
    end)
  end)

  describe("connections", function()
    it("serves pipelined requests on one connection, in order", function()
      local srv, c = start(function(req)
        if req.path == "/slow" then tide.sleep(0.05) end
        return req.path
      end)
      c:write(get("/slow") .. "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi" .. get("/3"))
      assert.equals("/slow", read_response(c).body)
      assert.equals("/2", read_response(c).body)
      assert.equals("/3", read_response(c).body)
      c:close()
      srv:close()
    end)

    it("keeps an HTTP/1.1 connection alive between requests", function()
      local n = 0
      local srv, c = start(function() n = n + 1 return tostring(n) end)
      for i = 1, 3 do
        c:write(get("/"))
        local r = read_response(c)
        assert.equals(tostring(i), r.body)
        assert.is_nil(r.headers.connection)
        tide.sleep(0.02)
      end
      c:close()
      srv:close()
    end)

    it("honours Connection: close: answers, then closes", function()
      local srv, c = start()
      c:write(get("/", "Connection: close\r\n"))
      local r = read_response(c)
      assert.equals("close", r.headers.connection)
      assert.equals("GET / 1.1 []", r.body)
      assert.is_nil(read_eof(c))
      c:close()
      srv:close()
    end)

    it("closes after an HTTP/1.0 request unless keep-alive is asked", function()
      local srv, c = start()
      c:write("GET /old HTTP/1.0\r\n\r\n")
      local r = read_response(c)
      assert.equals("GET /old 1.0 []", r.body)
      assert.equals("close", r.headers.connection)
      assert.is_nil(read_eof(c))
      c:close()
      c = net.connect("127.0.0.1", srv:port())
      c:write("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
      r = read_response(c)
      assert.equals("keep-alive", r.headers.connection)
      c:write("GET /b HTTP/1.0\r\n\r\n")
      assert.equals("GET /b 1.0 []", read_response(c).body)
      assert.is_nil(read_eof(c))
      c:close()
      srv:close()
    end)

    it("answers HEAD with the headers only", function()
      local srv, c = start(function() return ("x"):rep(100) end)
      -- a body after the HEAD answer would be read as the next status line
      c:write("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n" .. get("/"))
      local r = read_response(c, { head = true })
      assert.equals(200, r.status)
      assert.equals("100", r.headers["content-length"])
      r = read_response(c)
      assert.equals(200, r.status)
      assert.equals(100, #r.body)
      c:close()
      srv:close()
    end)

    it("keeps a handler's Content-Length on HEAD and 304 (the size a GET would get)", function()
      local srv, c = start(function(req)
        if req.path == "/304" then return { status = 304, headers = { ["Content-Length"] = "55" } } end
        if req.path == "/stream" then
          return { headers = { ["Content-Length"] = "99" }, body = function() return nil end }
        end
        return { headers = { ["Content-Length"] = "1234", ["Content-Type"] = "application/zip" } }
      end)
      c:write("HEAD / HTTP/1.1\r\nHost: h\r\n\r\nHEAD /stream HTTP/1.1\r\nHost: h\r\n\r\n" .. get("/304"))
      assert.equals("1234", read_response(c, { head = true }).headers["content-length"])
      assert.equals("99", read_response(c, { head = true }).headers["content-length"])
      local r = read_response(c, { head = true })
      assert.equals(304, r.status)
      assert.equals("55", r.headers["content-length"])
      c:close()
      srv:close()
    end)

    it("closes a keep-alive connection idle for idle_timeout", function()
      local srv, c = start(nil, { idle_timeout = 0.2 })
      c:write(get("/"))
      assert.equals(200, read_response(c).status)
      local t0 = tide.time()
      assert.is_nil(read_eof(c))
      local waited = tide.time() - t0
      assert.is_true(waited > 0.15 and waited < 1, "closed after " .. waited .. " s")
      c:close()
      srv:close()
    end)

    it("server:close() closes idle keep-alive connections and leaves no task", function()
      local srv, c = start()
      c:write(get("/"))
      assert.equals(200, read_response(c).status)
      assert.equals(1, others()) -- the connection's task, waiting for a request
      local t0 = tide.time()
      srv:close()
      assert.is_true(tide.time() - t0 < 0.5, "the idle connection was not closed at once")
      assert.equals(0, others())
      assert.is_nil(read_eof(c))
      c:close()
    end)

    it("server:close() lets a request in progress finish, then closes its connection", function()
      local started = tide.Event()
      local srv, c = start(function()
        started:set()
        tide.sleep(0.1)
        return "done"
      end)
      c:write(get("/"))
      started:wait()
      srv:close() -- waits for the connection
      assert.equals(0, others())
      local r = read_response(c)
      assert.equals("done", r.body)
      assert.equals("close", r.headers.connection)
      assert.is_nil(read_eof(c))
      c:close()
    end)
  end)

  describe("responses", function()
    it("streams a body produced by a function with chunked encoding", function()
      local go = tide.Event()
      local srv, c = start(function()
        local i = 0
        return {
          headers = { ["Content-Type"] = "text/plain" },
          body = function()
            i = i + 1
            if i == 2 then go:wait() end -- the first chunk must be out before this
            if i <= 3 then return "part" .. i .. ";" end
          end,
        }
      end)
      c:write(get("/"))
      local chunks = {}
      local r = read_response(c, { on_chunk = function(chunk)
        chunks[#chunks + 1] = chunk
        go:set()
      end })
      assert.equals("chunked", r.headers["transfer-encoding"])
      assert.is_nil(r.headers["content-length"])
      assert.equals("part1;part2;part3;", r.body)
      assert.same({ "part1;", "part2;", "part3;" }, chunks)
      c:write(get("/")) -- still usable afterwards
      go:set()
      assert.equals("part1;part2;part3;", read_response(c).body)
      c:close()
      srv:close()
    end)

    it("streams to an HTTP/1.0 client until the close", function()
      local srv, c = start(function()
        local i = 0
        return { body = function() i = i + 1 if i <= 2 then return "p" .. i end end }
      end)
      c:write("GET / HTTP/1.0\r\n\r\n")
      local r = read_response(c)
      assert.is_nil(r.headers["transfer-encoding"])
      assert.equals("p1p2", r.body)
      c:close()
      srv:close()
    end)

    it("closes the connection when the body function fails mid-stream, and reports it", function()
      local real, logged = io.stderr, {}
      io.stderr = { write = function(_, ...) logged[#logged + 1] = table.concat({ ... }) end } -- luacheck: ignore
      local srv, c = start(function()
        local i = 0
        return { body = function()
          i = i + 1
          if i == 2 then error("broken generator") end
          return "first"
        end }
      end)
      c:write(get("/"))
      local ok, e = pcall(read_response, c)
      local eof_ok, eof = pcall(read_eof, c)
      io.stderr = real -- luacheck: ignore
      assert.is_false(ok, "a complete response was read") -- the stream ends before the last chunk
      assert.is_false(tide.iserror(e) and e.kind == "timeout", "the connection was not closed")
      assert.is_true(eof_ok and eof == nil)
      local text = table.concat(logged)
      assert.matches("broken generator", text)
      assert.matches("stack traceback", text)
      c:close()
      srv:close()
    end)

    it("sends a big string body whole (with backpressure)", function()
      local big = ("0123456789abcdef"):rep(1 << 16) -- 1 MiB
      local srv, c = start(function() return { body = big } end)
      c:write(get("/", "Connection: close\r\n"))
      local r = read_response(c)
      assert.equals(#big, tonumber(r.headers["content-length"]))
      assert.is_true(r.body == big)
      c:close()
      srv:close()
    end)

    it("answers Expect: 100-continue before the body is sent", function()
      local srv, c = start()
      c:write("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
      local r = read_response(c)
      assert.same({ 100, "Continue" }, { r.status, r.reason })
      c:write("12345")
      r = read_response(c)
      assert.equals(200, r.status)
      assert.equals("POST /up 1.1 [12345]", r.body)
      c:close()
      srv:close()
    end)
  end)

  describe("errors", function()
    local function expect_error(status, opts, request)
      local called = false
      local srv, c = start(function() called = true return "no" end, opts)
      c:write(request)
      local r = read_response(c)
      assert.equals(status, r.status)
      assert.equals("close", r.headers.connection)
      assert.is_nil(read_eof(c))
      assert.is_false(called)
      c:close()
      srv:close()
    end

    it("431 for a head over max_header_size", function()
      expect_error(431, nil, get("/", "X-Big: " .. ("x"):rep(20000) .. "\r\n"))
      expect_error(414, { max_header_size = 100 }, get("/" .. ("p"):rep(200))) -- the target alone
    end)

    it("413 for a body over max_body_size, said or chunked", function()
      expect_error(413, nil, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " .. (17 << 20) .. "\r\n\r\nabc")
      expect_error(413, { max_body_size = 4 },
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    end)

    it("400 for garbage", function()
      expect_error(400, nil, "BLAH BLAH\r\n\r\n")
      expect_error(400, nil, "GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n")
    end)

    it("400 for what RFC 9112 says MUST be: space before a colon, no Host or two in HTTP/1.1", function()
      expect_error(400, nil, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 3\r\n\r\nabc")
      expect_error(400, nil, "GET / HTTP/1.1\r\n\r\n")
      expect_error(400, nil, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
      expect_error(400, nil, "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n") -- any version
      expect_error(400, nil, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n")
      expect_error(400, nil, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n")
      expect_error(400, nil, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n"
        .. "Expect: 100-continue\r\n\r\n") -- a 400, not a 100 Continue first
      expect_error(400, nil, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        .. "Transfer-Encoding:\r\n\r\n0\r\n\r\n")
      local srv, c = start() -- HTTP/1.0 needs no Host; 1.2 is served as 1.1 (RFC 9110 2.5)
      c:write("GET /old HTTP/1.0\r\n\r\n")
      assert.equals(200, read_response(c).status)
      c:close()
      srv:close()
      srv, c = start()
      c:write("GET /new HTTP/1.2\r\nHost: h\r\n\r\n")
      assert.equals("GET /new 1.1 []", read_response(c).body)
      c:close()
      srv:close()
    end)

    it("501 for a transfer coding other than chunked, 505 for a version other than 1.x, with a Date", function()
      expect_error(501, nil, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
      expect_error(505, nil, "GET / HTTP/2.0\r\nHost: h\r\n\r\n")
      local srv, c = start()
      c:write("HELLO\r\n\r\n")
      local r = read_response(c)
      assert.equals(400, r.status)
      assert.matches("GMT$", r.headers.date)
      c:close()
      srv:close()
    end)

    it("closes after answering an HTTP/1.0 request framed by Transfer-Encoding", function()
      local srv, c = start()
      c:write("POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        .. "GET /second HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
      local r = read_response(c)
      assert.equals("POST / 1.0 [abc]", r.body)
      assert.is_nil(read_eof(c))
      c:close()
      srv:close()
    end)

    it("takes max_body_size = math.huge as no limit", function()
      local srv, c = start(nil, { max_body_size = math.huge })
      c:write("POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
      assert.equals("POST /big 1.1 [abc]", read_response(c).body)
      c:close()
      srv:close()
    end)

    it("drops a peer that takes nothing for idle_timeout while a response waits for it", function()
      local srv, c = start(function() return { body = string.rep("x", 8 << 20) } end,
        { idle_timeout = 0.3 })
      c:write(get("/big"))
      tide.sleep(1) -- never reading meanwhile
      local got, ok = 0, true
      tide.timeout(2, function()
        while ok do
          local d
          ok, d = pcall(c.read, c, 65536)
          ok = ok and d ~= nil
          if ok then got = got + #d end
        end
      end)
      assert.is_true(got < 8 << 20, "the whole body came: " .. got)
      c:close()
      srv:close()
    end)

    it("gives a slow reader that keeps taking bytes the whole body, however long it takes", function()
      local size = 6 << 20
      local srv, c = start(function() return { body = string.rep("y", size) } end, { idle_timeout = 0.3 })
      c:write(get("/big"))
      local got, t0 = 0, tide.time()
      while got < size + 100 do -- 64 KB every 5 ms: slower than 0.3 s for the whole body
        local d = c:read(65536)
        if not d then break end
        got = got + #d
        tide.sleep(0.005)
      end
      assert.is_true(got > size, ("got %d of %d bytes"):format(got, size))
      assert.is_true(tide.time() - t0 > 0.3, "the reader was not slow enough to test this")
      c:close()
      srv:close()
    end)

    -- Writes the pieces to a server with idle_timeout 0.3 s, one every 50 ms,
    -- and checks that it closes the connection within a second.
    local function cut_off(pieces)
      local srv, c = start(nil, { idle_timeout = 0.3 })
      local t0 = tide.time()
      local closed = tide.spawn(function() return c:read() end)
      for _, piece in ipairs(pieces) do
        if closed:done() then break end
        pcall(c.write, c, piece)
        tide.sleep(0.05)
      end
      assert.is_nil(closed:await())
      assert.is_true(tide.time() - t0 < 1, "took " .. tide.time() - t0)
      c:close()
      srv:close()
    end

    it("closes a connection whose head trickles in slower than idle_timeout (slowloris)", function()
      local bytes = {}
      for byte in ("GET / HTTP/1.1\r\nHost: h\r\nX-A: bcdefghijklmn"):gmatch(".") do bytes[#bytes + 1] = byte end
      cut_off(bytes)
    end)

    it("closes a connection that sends only empty lines for idle_timeout (they buy no time)", function()
      local lines = {}
      for i = 1, 40 do lines[i] = "\r\n" end
      cut_off(lines)
    end)

    it("500 for a handler error, without the message, reported once on stderr", function()
      local lines = {}
      local real = io.stderr
      io.stderr = { write = function(_, ...) -- luacheck: ignore
        for _, s in ipairs({ ... }) do lines[#lines + 1] = s end
      end }
      local srv, c = start(function(req)
        if req.path == "/boom" then error("secret detail") end
        return "fine"
      end)
      c:write(get("/boom"))
      local ok, r = pcall(read_response, c)
      io.stderr = real -- luacheck: ignore
      assert.is_true(ok, r)
      assert.equals(500, r.status)
      assert.equals("text/plain; charset=utf-8", r.headers["content-type"]) -- as the 4xx answers
      assert.is_nil(r.body:find("secret", 1, true))
      local logged = table.concat(lines)
      assert.equals(1, select(2, logged:gsub("secret detail", "")))
      assert.matches("stack traceback", logged)
      c:write(get("/ok")) -- the connection goes on
      assert.equals("fine", read_response(c).body)
      c:close()
      srv:close()
    end)

    it("500 for a bad response: bad status, header injection, a body not a string", function()
      local lines = {}
      local real = io.stderr
      io.stderr = { write = function(_, ...) -- luacheck: ignore
        for _, s in ipairs({ ... }) do lines[#lines + 1] = s end
      end }
      local srv, c = start(function(req)
        if req.path == "/status" then return { status = "x" } end
        if req.path == "/600" then return { status = 600 } end
        if req.path == "/99" then return { status = 99 } end
        if req.path == "/body" then return { body = { "a table" } } end
        return { headers = { ["X-A"] = "1\r\nX-Injected: 1" } }
      end)
      c:write(get("/status") .. get("/header") .. get("/body") .. get("/600") .. get("/99"))
      local ok, r1, r2, r3, r4, r5 = pcall(function()
        return read_response(c), read_response(c), read_response(c), read_response(c), read_response(c)
      end)
      io.stderr = real -- luacheck: ignore
      assert.is_true(ok, r1)
      assert.same({ 500, 500, 500, 500, 500 }, { r1.status, r2.status, r3.status, r4.status, r5.status })
      assert.equals("text/plain; charset=utf-8", r1.headers["content-type"])
      assert.matches("handler for GET /600: bad status 600", table.concat(lines), 1, true)
      assert.is_nil(r2.headers["x-injected"])
      assert.is_nil(r3.body:find("table:", 1, true))
      assert.matches("handler for GET /body: body is a table, not a string or a function",
        table.concat(lines), 1, true)
      c:close()
      srv:close()
    end)

    it("500 for a NUL in a header value; Connection = {\"close\"} closes; a bare body is application/octet-stream", function()
      local srv, c = start(function(req)
        if req.path == "/nul" then return { headers = { ["X-Bad"] = "a\0b" }, body = "n" } end
        if req.path == "/bare" then return { body = "x" } end
        return { headers = { Connection = { "close" } }, body = "c" }
      end, { log = false })
      c:write(get("/nul") .. get("/bare") .. get("/close"))
      local r1, r2, r3 = read_response(c), read_response(c), read_response(c)
      assert.same({ 500, 200, 200 }, { r1.status, r2.status, r3.status })
      assert.equals("application/octet-stream", r2.headers["content-type"])
      assert.equals("close", r3.headers.connection)
      assert.is_nil(read_eof(c))
      c:close()
      srv:close()
    end)

    it("sends neither a body nor a default Content-Type with 204, 304 and 1xx", function()
      local srv, c = start(function(req)
        return { status = tonumber(req.path:sub(2)), body = "not sent" }
      end)
      c:write(get("/204") .. get("/304") .. get("/103"))
      for _, status in ipairs({ 204, 304, 103 }) do
        local r = read_response(c) -- a body would be read as the next status line
        assert.equals(status, r.status)
        assert.is_nil(r.headers["content-type"], status)
        assert.is_nil(r.headers["content-length"], status)
        assert.is_nil(r.headers["transfer-encoding"], status)
      end
      assert.is_nil(read_eof(c)) -- a 1xx is no final answer: the connection closes
      c:close()
      srv:close()
    end)

    it("a body function giving a chunk that is not a string ends the connection, reported, not sent", function()
      local lines = {}
      local real = io.stderr
      io.stderr = { write = function(_, ...) -- luacheck: ignore
        for _, x in ipairs({ ... }) do lines[#lines + 1] = x end
      end }
      local srv, c = start(function()
        local n = 0
        return { body = function() n = n + 1 if n < 3 then return {} end end }
      end)
      c:write(get("/"))
      local ok, r = pcall(read_response, c)
      io.stderr = real -- luacheck: ignore
      assert.is_false(ok) -- cut off mid-body
      assert.is_nil(tostring(r):find("table: ", 1, true))
      assert.matches("returned a table, not a string or nil", table.concat(lines), 1, true)
      c:close()
      srv:close()
    end)

    it("500 and no report with log = false, also for a bad return", function()
      local real, wrote = io.stderr, false
      io.stderr = { write = function() wrote = true end } -- luacheck: ignore
      local srv, c = start(function(req)
        if req.path == "/nil" then return nil end
        error("x")
      end, { log = false })
      c:write(get("/err") .. get("/nil"))
      local ok1, r1 = pcall(read_response, c)
      local ok2, r2 = pcall(read_response, c)
      io.stderr = real -- luacheck: ignore
      assert.is_true(ok1 and ok2)
      assert.same({ 500, 500 }, { r1.status, r2.status })
      assert.is_false(wrote)
      c:close()
      srv:close()
    end)
  end)

  describe("with curl", function()
    it("serves curl from another process, answering its Expect: 100-continue", function()
      local exe = os.getenv("TIDE_BIN") -- set by ctest; else this process's binary
      if not exe then
        local pid = io.open("/proc/self/stat"):read("n")
        local rl = io.popen("readlink /proc/" .. pid .. "/exe")
        exe = rl:read("l")
        rl:close()
      end
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write([[
        local tide = require "tide"
        local done = tide.Event()
        local srv <close> = require("tide.http_server").serve("127.0.0.1", 0, function(req)
          done:set()
          return ("%s %s %d %s"):format(req.method, req.path, #req.body, req.headers.expect or "-")
        end)
        print(srv:port())
        io.stdout:flush()
        tide.wait_for(function() done:wait() end, 10)
        tide.sleep(0.1)
      ]])
      f:close()
      local server = io.popen(exe .. " " .. script)
      local port = server:read("l")
      local t0 = tide.time()
      local p = io.popen(("head -c 20000 /dev/zero | /usr/bin/curl -s --max-time 10 " ..
        "--expect100-timeout 5 -H 'Expect: 100-continue' --data-binary @- " ..
        "http://127.0.0.1:%s/up"):format(port))
      local out = p:read("a")
      p:close()
      local elapsed = tide.time() - t0
      server:close()
      os.remove(script)
      assert.equals("POST /up 20000 100-continue", out)
      assert.is_true(elapsed < 2, ("curl took %.2f s: no 100 Continue?"):format(elapsed))
    end)
  end)
end)
