-- Specs for tide.http (the client), against servers this spec starts on
-- 127.0.0.1: an httpbin-like server in Python's standard library and nginx
-- (TLS, HTTP/2), both independent of tide (spec/servers.lua), and tide's
-- own http.serve.
local tide = require "tide"
local http = require "tide.http"
local servers = require "spec.servers"
local cjson = require "cjson"
local lfs = require "lfs"
local S = require "spec.support"
local errkind = S.errkind

local function fds()
  local n = 0
  for _ in lfs.dir("/proc/self/fd") do n = n + 1 end
  return n
end

-- Expects the fd count back at `base` (closing is asynchronous: a few turns).
local function fds_back(base)
  for _ = 1, 50 do
    if fds() <= base then return end
    tide.sleep(0.01)
  end
  assert.equals(base, fds(), "file descriptors leaked")
end

local hb
local function url(path) hb = hb or servers.httpbin(); return hb.url(path) end
local function echo(res) return cjson.decode(res.body) end

describe("tide.http", function()
  describe("get", function()
    it("returns status, headers, body, final url and timings", function()
      local res = http.get(url("/get"), { query = { n = 1, q = "a b&c" }, timeout = 5 })
      assert.equals(200, res.status)
      assert.equals("OK", res.reason)
      assert.equals("application/json", res.headers["content-type"])
      assert.equals("application/json", res.headers["Content-Type"])
      assert.equals(#res.body, tonumber(res.headers["content-length"]))
      local e = echo(res)
      assert.equals("GET", e.method)
      assert.same({ "1" }, e.query.n)
      assert.same({ "a b&c" }, e.query.q) -- encoded, then decoded by the server
      assert.equals(url("/get") .. "?n=1&q=a%20b%26c", res.url)
      assert.equals("1.1", res.http_version)
      assert.is_number(res.timings.total)
      assert.is_true(res.timings.total >= res.timings.connect)
    end)

    it("percent-encodes spaces and bytes past ASCII in the path and query, as aiohttp and requests", function()
      local res = http.get(url("/anything/a b/é") .. "?x=a b#frag", { query = "y=c d" })
      local e = echo(res)
      assert.equals("/anything/a%20b/%C3%A9", e.path)
      assert.same({ x = { "a b" }, y = { "c d" } }, e.query)
      assert.equals(url("/anything/a%20b/%C3%A9?x=a%20b&y=c%20d"), res.url) -- no #fragment: never sent
    end)

    it("percent-encodes what requests and yarl do, a '#' in a query string too, and refuses a NUL in the host", function()
      -- " < > \ ^ ` { | }, controls and a % that starts no escape were sent raw, a NUL cut the URL
      local res = http.get(url("/anything/a\"b<c>|d\\e^f`g{h}/100%/%41\0x"), { query = "a=#1&b=2" })
      local e = echo(res)
      assert.equals("/anything/a%22b%3Cc%3E%7Cd%5Ce%5Ef%60g%7Bh%7D/100%25/%41%00x", e.path)
      assert.same({ a = { "#1" }, b = { "2" } }, e.query)
      local kind, err = errkind(http.get, "http://127.0.0.1\0.evil.example/")
      assert.equals("invalid_url", kind)
      assert.matches("a control character or a space in the host", err.message, 1, true)
      assert.equals("invalid_url", (errkind(http.get, "http://ex ample.localhost/")))
    end)

    it("sends floats in query and form as Python's repr does, and refuses NaN and infinities", function()
      local vals = { x = 0.1 + 0.2, big = 2^63, f = 2.0, small = 1.5e-5, i = 3 }
      local e = echo(http.post(url("/anything"), { query = vals, form = vals }))
      local want = { x = { "0.30000000000000004" }, big = { "9.223372036854776e+18" }, f = { "2.0" },
        small = { "1.5e-05" }, i = { "3" } }
      assert.same(want, e.query)
      assert.same(want, e.form)
      local _, err = pcall(http.get, url("/get"), { query = { n = 0 / 0 } })
      assert.matches("value of 'n' must be a finite number, got nan", err, 1, true)
      -- a float name: its value was lost ("0.3=nil")
      assert.equals("0.30000000000000004=2&b=x", http.urlencode({ [0.1 + 0.2] = 2, b = "x" }))
    end)

    it("sends a host name past ASCII in its IDNA form (xn--), as aiohttp, and refuses one IDNA refuses", function()
      local port = url("/"):match(":(%d+)/")
      local e = echo(http.get(("http://BÜCHER.localhost:%s/anything/é"):format(port))) -- (*.localhost is 127.0.0.1)
      assert.equals("xn--bcher-kva.localhost:" .. port, e.headers.host)
      assert.equals("/anything/%C3%A9", e.path)
      local kind, err = errkind(http.get, "http://a\xff.localhost/")
      assert.equals("invalid_url", kind)
      assert.matches("bad international host name", err.message, 1, true)
    end)

    it("adds opts.query to the URL's own query, before a #fragment", function()
      local e = echo(http.get(url("/get?a=1#frag"), { query = { b = 2 } }))
      assert.same({ a = { "1" }, b = { "2" } }, e.query)
      assert.same({ b = { "2" } }, echo(http.get(url("/get?#f"), { query = "b=2" })).query)
    end)

    it("reads a buffered body with read(n) and chunks(n) too, and keeps res.body for res:json()", function()
      local res = http.get(url("/get"))
      local parts = { res:read(5) }
      for chunk in res:chunks(7) do
        assert.is_true(#chunk <= 7)
        parts[#parts + 1] = chunk
      end
      assert.equals(res.body, table.concat(parts))
      assert.is_nil(res:read())
      assert.equals("/get", res:json().path) -- read() used to take res.body away
    end)

    it("refuses chunks(0), which would give \"\" for ever", function()
      local res = http.get(url("/get"))
      local _, e = pcall(res.chunks, res, 0)
      assert.matches("bad argument #1 to 'chunks' (positive byte count expected, got 0)", e, 1, true)
    end)

    it("treats a 404 as a response, and raise_for_status makes it an error", function()
      local res = http.get(url("/status/404"))
      assert.equals(404, res.status)
      assert.is_false(res:ok())
      local kind, e = errkind(res.raise_for_status, res)
      assert.equals("http", kind)
      assert.equals(404, e.status)
      assert.truthy(e.message:find(url("/status/404"), 1, true))
      local ok204 = http.get(url("/status/204"))
      assert.equals(ok204, ok204:raise_for_status())
    end)

    it("keeps repeated headers and looks names up in any case", function()
      local res = http.get(url("/headers-repeat"))
      assert.same({ "one", "two" }, res.headers:get_all("x-multi"))
      assert.same({ "one", "two" }, res.headers:get_all("X-MULTI"))
      assert.equals("one", res.headers["X-Multi"])
      local n = 0
      for _, pair in ipairs(res.headers:list()) do
        if pair[1]:lower() == "set-cookie" then n = n + 1 end
      end
      assert.equals(2, n)
    end)

    it("looks up a header with a long name as any other, whether or not list() came first", function()
      local long = "X-" .. ("n"):rep(200)
      local server <close> = http.serve("127.0.0.1", 0, function()
        return { headers = { [long] = "v", ["X-Short"] = "s" }, body = "" }
      end)
      local res = http.get(server:url("/"))
      assert.equals("v", res.headers[long])
      assert.equals("v", res.headers[long:lower()])
      local n = 0
      for name in pairs(res.headers) do if name == long:lower() then n = n + 1 end end
      assert.equals(1, n)
      res = http.get(server:url("/"))
      assert.equals(1, #res.headers:get_all(long))
      assert.equals("v", res.headers[long])
    end)

    it("sends headers and decodes compressed bodies", function()
      local e = echo(http.get(url("/get"), { headers = { ["X-Token"] = "abc", Accept = "text/plain" } }))
      assert.equals("abc", e.headers["x-token"])
      assert.equals("text/plain", e.headers["accept"])
      local g = http.get(url("/gzip"))
      assert.equals("gzip", g.headers["content-encoding"])
      assert.is_true(g:json().gzipped)
    end)

    it("sends a User-Agent and the encodings it decodes, unless the caller gives its own", function()
      local function raw(opts) -- name -> every value received
        local out = {}
        for _, nv in ipairs(echo(http.get(url("/get"), opts)).raw_headers) do
          local k = nv[1]:lower()
          out[k] = out[k] or {}
          table.insert(out[k], nv[2])
        end
        return out
      end
      local h = raw()
      assert.same({ "tide/0.1" }, h["user-agent"])
      assert.equals(1, #h["accept-encoding"])
      assert.matches("gzip", h["accept-encoding"][1])
      h = raw({ headers = { ["user-agent"] = "me/1", ["Accept-Encoding"] = "identity" } })
      assert.same({ "me/1" }, h["user-agent"])
      assert.same({ "identity" }, h["accept-encoding"])
      h = raw({ headers = { ["X-A"] = "1" } })
      assert.same({ "tide/0.1" }, h["user-agent"])
      assert.equals(1, #h["accept-encoding"])
      assert.same({ "" }, raw({ headers = { ["User-Agent"] = "" } })["user-agent"]) -- sent empty
      local s <close> = http.session({ headers = { ["User-Agent"] = "sess/2" } })
      assert.equals("sess/2", echo(s:get(url("/get"))).headers["user-agent"])
      assert.equals("gzip", s:get(url("/gzip")).headers["content-encoding"])
    end)

    it("gives a request without options its session's defaults, never the options of one before", function()
      -- (requests without options reuse the spec their session made for the first one)
      local s1 <close> = http.session({ headers = { ["X-S"] = "s" } })
      for _, c in ipairs({ { get = http.get, head = http.head },
          { get = function(...) return s1:get(...) end, head = function(...) return s1:head(...) end, want = "s" } }) do
        assert.equals(c.want, echo(c.get(url("/get"))).headers["x-s"])
        assert.equals("1", echo(c.get(url("/get"), { headers = { ["X-A"] = "1", ["X-S"] = "o" } })).headers["x-a"])
        local h = echo(c.get(url("/get"))).headers
        assert.is_nil(h["x-a"])
        assert.equals(c.want, h["x-s"])
        assert.equals("timeout", errkind(function() return c.get(url("/delay/0.3"), { timeout = 0.1 }) end))
        assert.equals(0.3, echo(c.get(url("/delay/0.3"))).delay) -- not the 0.1 s timeout of the one before
        assert.equals(200, c.head(url("/get")).status)
        assert.equals("invalid_url", errkind(function() return c.get("127.0.0.1/get") end))
      end
      local s <close> = http.session({ base_url = url("/anything") })
      assert.equals("/anything/a", echo(s:get("a")).path)
      assert.equals("/anything/b", echo(s:get("/b")).path)
    end)

    it("decodes JSON with res:json() and reports a body that is not JSON", function()
      assert.equals("GET", http.get(url("/get")):json().method)
      local kind = errkind(function() return http.get(url("/bytes/10")):json() end)
      assert.equals("json", kind)
    end)

    it("sends and reads JSON integers exactly, as Python's json (lua-cjson alone would round them)", function()
      local server <close> = http.serve("127.0.0.1", 0, function(req)
        return { headers = { ["Content-Type"] = "application/json" }, body = req.body }
      end)
      local res = http.post(server:url("/"), { json = { id = 123456789012345, n = 3, f = 0.5,
        nested = { { big = 9007199254740993 } }, s = "\0\1 kept" } })
      assert.matches('"id":123456789012345[,}]', res.body)
      local v = res:json()
      assert.equals(123456789012345, v.id)
      assert.equals("integer", math.type(v.n))
      assert.equals(0.5, v.f)
      assert.equals(9007199254740993, v.nested[1].big)
      assert.equals("\0\1 kept", v.s)
      assert.equals(cjson.null, http.post(server:url("/"), { body = '{"x": null}' }):json().x)
      -- a big integer key is a JSON string with its exact digits
      local keyed = http.post(server:url("/"), { json = { [123456789012345] = "x" } })
      assert.equals('{"123456789012345":"x"}', keyed.body)
      assert.equals(200, http.get(url("/get"), { max_body_size = 2^20 }).status) -- a whole float
    end)

    it("sends JSON floats with every digit they need, as Python's json (lua-cjson alone prints 14)", function()
      local server <close> = http.serve("127.0.0.1", 0, function(req) return { body = req.body } end)
      local floats = { 0.1 + 0.2, 1 / 3, 2^53 + 0.0, 1e22, 1e-7, 0.5, -2.5e-300, 123456.789, 2.0, -0.0, 1e15 }
      local body = http.post(server:url("/"), { json = floats }).body
      -- what python3 -c 'import json; print(json.dumps([...], separators=(",", ":")))' prints
      -- (2.0 went as 2 and -0.0 as -0: cjson prints %.14g)
      assert.equals("[0.30000000000000004,0.3333333333333333,9007199254740992.0,1e+22,1e-07,0.5,"
        .. "-2.5e-300,123456.789,2.0,-0.0,1000000000000000.0]", body)
      local back = http.post(server:url("/"), { json = floats }):json()
      for i, f in ipairs(floats) do assert.equals(f, back[i]) end
      assert.equals('{"0.30000000000000004":1}', http.post(server:url("/"), { json = { [0.1 + 0.2] = 1 } }).body)
    end)

    it("refuses a JSON string that is not UTF-8 (cjson sent its bytes: no JSON text)", function()
      local _, e = pcall(http.post, url("/anything"), { json = { a = "ok", b = { "x\xff" } } })
      assert.matches("bad argument #2 to 'post' (opts.json: a string that is not UTF-8 (byte 2 of 2 is not))",
        e, 1, true)
      assert.equals("ü", echo(http.post(url("/anything"), { json = { s = "ü" } })).json.s)
      -- behind a float that needs its exact text (the walk stopped at it)
      _, e = pcall(http.post, url("/anything"), { json = { 0.1 + 0.2, "\xff" } })
      assert.matches("opts.json: a string that is not UTF-8 (byte 1 of 1 is not)", e, 1, true)
    end)

    it("sends empty arrays as [] with empty_array or array_mt, and res:json() keeps them arrays", function()
      local server <close> = http.serve("127.0.0.1", 0, function(req) return { body = req.body } end)
      local function sent(v) return http.post(server:url("/"), { json = v }).body end
      assert.equals('{"a":[]}', sent({ a = http.empty_array }))
      assert.equals('{"a":[]}', sent({ a = setmetatable({}, http.array_mt) }))
      assert.equals('{"a":{}}', sent({ a = {} })) -- a plain empty table is an object, as cjson says
      assert.equals("[[],0.30000000000000004]", sent({ http.empty_array, 0.1 + 0.2 }))
      local v = http.post(server:url("/"), { body = '{"a":[],"b":{},"c":[1,[]],"n":2}' }):json()
      assert.equals(http.array_mt, getmetatable(v.a))
      assert.is_nil(getmetatable(v.b))
      assert.equals(math.type(2), math.type(v.n))
      assert.equals('[1,[]]', sent(v.c))
      assert.has_error(function() http.empty_array[1] = 1 end)
    end)

    it("runs thousands of requests concurrently in one loop", function()
      local s <close> = http.session()
      local tasks = {}
      for i = 1, 300 do tasks[i] = tide.spawn(s.get, s, url("/get?i=" .. i)) end
      local results = tide.gather(tasks)
      for i = 1, 300 do assert.same({ tostring(i) }, echo(results[i]).query.i) end
    end)
  end)

  describe("request", function()
    it("names opts.body when a body function gives something other than a string", function()
      local ok, e = pcall(http.post, url("/anything"), { body = function() return 5 end })
      assert.is_false(ok)
      assert.matches("^spec/http_spec.lua:%d+: bad argument #2 to 'post' %(opts.body: the body "
        .. "function gave a number %(strings expected%)%)$", e)
    end)

    it("sends string, JSON, form and streamed bodies with any method", function()
      local e = echo(http.post(url("/anything"), { body = "raw body" }))
      assert.equals("POST", e.method)
      assert.equals("raw body", e.body)
      e = echo(http.put(url("/anything"), { json = { a = 1, list = { 1, 2 } } }))
      assert.equals("PUT", e.method)
      assert.equals("application/json", e.headers["content-type"])
      assert.same({ a = 1, list = { 1, 2 } }, e.json)
      e = echo(http.patch(url("/anything"), { form = { x = "1 2", y = "&" } }))
      assert.equals("PATCH", e.method)
      assert.same({ x = { "1 2" }, y = { "&" } }, e.form)
      local i = 0
      e = echo(http.post(url("/anything"), { body = function()
        i = i + 1
        tide.sleep(0.01) -- a producer that suspends
        if i <= 3 then return "part" .. i .. ";" end
      end }))
      assert.equals("part1;part2;part3;", e.body)
      assert.equals("chunked", e.headers["transfer-encoding"])
      e = echo(http.request("delete", url("/anything"), { body = { "a", "b", "c" } }))
      assert.equals("DELETE", e.method)
      assert.equals("abc", e.body)
    end)

    it("calls a callable table given as the body, as a function (it was sent as an empty array)", function()
      local parts = { "a", "b", "c" }
      local body = setmetatable({}, { __call = function() return table.remove(parts, 1) end })
      assert.equals("abc", echo(http.post(url("/anything"), { body = body })).body)
    end)

    it("gives a body no Content-Type unless the caller, opts.json or opts.form does (curl would say form)", function()
      assert.is_nil(echo(http.post(url("/anything"), { body = '{"a":1}' })).headers["content-type"])
      assert.is_nil(echo(http.put(url("/anything"), { body = "raw" })).headers["content-type"])
      assert.is_nil(echo(http.post(url("/anything"))).headers["content-type"])
      assert.is_nil(echo(http.post(url("/anything"), { body = { "a", "b" } })).headers["content-type"])
      local e = echo(http.post(url("/anything"), { body = "x", headers = { ["content-type"] = "text/csv" } }))
      assert.equals("text/csv", e.headers["content-type"])
      e = echo(http.post(url("/anything"), { form = { a = 1 } }))
      assert.equals("application/x-www-form-urlencoded", e.headers["content-type"])
    end)

    it("sends a body function with the caller's Content-Length as it is, not chunked", function()
      local parts = { "abc", "abc" }
      local i = 0
      local e = echo(http.put(url("/anything"), { headers = { ["Content-Length"] = "6" },
        body = function() i = i + 1 return parts[i] end }))
      assert.equals("abcabc", e.body)
      assert.equals("6", e.headers["content-length"])
      assert.is_nil(e.headers["transfer-encoding"])
    end)

    it("fails at once when a body function gives fewer or more bytes than its Content-Length", function()
      -- fewer: both ends waited until the timeout; more: curl cut the rest off silently
      for _, case in ipairs({ { { "abc" }, "fewer" }, { { "abcdef", "ghijkl" }, "more" } }) do
        local parts = case[1]
        local kind, e = errkind(http.put, url("/anything"), { headers = { ["Content-Length"] = "10" },
          timeout = 5, body = function() return table.remove(parts, 1) end })
        assert.equals("http_transfer", kind)
        assert.matches("the body function gave " .. case[2] .. " than the 10 bytes its Content-Length says",
          e.message, 1, true) -- not kind timeout: it did not wait for one
      end
      assert.equals(200, http.get(url("/get")).status)
    end)

    it("sends Content-Length: 0 for POST, PUT and PATCH without a body", function()
      for _, f in ipairs { http.post, http.put, http.patch } do
        local e = echo(f(url("/anything")))
        assert.equals("0", e.headers["content-length"])
      end
      assert.is_nil(echo(http.delete(url("/anything"))).headers["content-length"])
    end)

    it("lets the loop run while a body function has nothing yet", function()
      local ticks, calls = 0, 0
      local ticker = tide.spawn(function() for _ = 1, 5 do tide.sleep(0.01); ticks = ticks + 1 end end)
      local t0 = tide.time()
      local e = echo(http.post(url("/anything"), { body = function()
        calls = calls + 1
        if tide.time() - t0 < 0.1 then return "" end
        if calls < 1e9 then calls = 1e9; return "late data" end
      end }))
      assert.equals("late data", e.body)
      ticker:await()
      assert.equals(5, ticks)
    end)

    it("sends a large body without waiting for 100-continue", function()
      local big = ("x"):rep(3 * 1024 * 1024)
      local t0 = tide.time()
      local e = echo(http.post(url("/anything"), { body = big }))
      assert.equals(#big, e.body_length)
      assert.is_nil(e.headers.expect)
      assert.is_true(tide.time() - t0 < 0.9, "waited for 100-continue")
    end)

    it("goes through a proxy and speaks the HTTP version asked", function()
      local e = echo(http.get("http://example.invalid/get?x=1", { proxy = servers.httpbin().base }))
      assert.equals("example.invalid", e.headers.host) -- the proxy got the absolute URL
      assert.same({ "1" }, e.query.x)
      assert.equals("HTTP/1.0", echo(http.get(url("/get"), { http_version = "1.0" })).http_version)
    end)

    it("makes a proxy's refusal of CONNECT kind connect, with its status (it was kind reset)", function()
      local net = require "tide.net"
      local proxy <close> = net.serve("127.0.0.1", 0, function(s)
        s:read_until("\r\n\r\n")
        s:write("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
      end)
      local kind, e = errkind(http.get, "https://example.invalid/", { proxy = "http://127.0.0.1:" .. proxy:port() })
      assert.equals("connect", kind)
      assert.matches("CONNECT tunnel failed, response 403", e.message, 1, true)
    end)

    it("uses the environment's proxy only with trust_env, as aiohttp", function()
      -- a child with http_proxy set: the httpbin server is the proxy
      local process = require "tide.process"
      local script = [[
        local http = require "tide.http"
        local cjson = require "cjson"
        local function host(opts) return cjson.decode(http.get("http://example.invalid/get", opts).body).headers.host end
        print(pcall(http.get, "http://example.invalid/get"))
        print(host({ trust_env = true }), host({ proxy = os.getenv("http_proxy") }))
        local s <close> = http.session({ trust_env = true })
        print(cjson.decode(s:get("http://example.invalid/get").body).headers.host)
      ]]
      local env = {}
      for _, name in ipairs({ "PATH", "HOME", "LUA_PATH", "LUA_CPATH" }) do env[name] = os.getenv(name) end
      env.http_proxy = servers.httpbin().base
      local r = process.run({ S.tide_bin(), "-e", script }, { env = env, timeout = 30 })
      assert.equals(0, r.code, r.stderr)
      local lines = {}
      for line in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.matches("^false\tdns: ", lines[1]) -- not through the proxy: example.invalid does not resolve
      assert.equals("example.invalid\texample.invalid", lines[2])
      assert.equals("example.invalid", lines[3])
    end)

    it("sends HEAD without a body and OPTIONS as asked", function()
      local res = http.head(url("/bytes/1000"))
      assert.equals(200, res.status)
      assert.equals("", res.body)
      assert.equals("1000", res.headers["content-length"])
      assert.equals("OPTIONS", echo(http.options(url("/anything"))).method)
    end)

    it("fails when the body function fails, and aborts the transfer", function()
      local base = fds()
      do
        local s <close> = http.session()
        local ok, e = pcall(s.post, s, url("/anything"), { body = function() error("no more data") end })
        assert.is_false(ok)
        assert.truthy(tostring(e):find("no more data"))
        local ok2, e2 = pcall(s.post, s, url("/anything"), { body = function() return 42 end })
        assert.is_false(ok2)
        assert.truthy(tostring(e2):find("strings expected"))
        assert.equals(200, s:get(url("/get")).status) -- still usable
      end
      fds_back(base)
    end)
  end)

  describe("redirects", function()
    it("follows them by default and reports the final URL", function()
      local res = http.get(url("/redirect/3"))
      assert.equals(200, res.status)
      assert.equals(url("/get"), res.url)
      assert.equals(3, res.redirects)
    end)

    it("sends a Location's spaces and bytes past ASCII as %XX, as aiohttp (curl sent '+' and lower-case hex)", function()
      local to = http.urlencode({ u = "/anything/a b?x=c d&y=é" }):sub(3)
      local want = "/anything/a%20b?x=c%20d&y=%E9" -- (http.server sends header text as Latin-1)
      for _, f in ipairs({ http.get, http.head, http.post }) do
        local res = f(url("/redirect-to?status=302&url=" .. to))
        assert.equals(url(want), res.url)
        assert.equals(1, res.redirects)
        if f ~= http.head then assert.equals(want, echo(res).target) end
      end
    end)

    it("returns a 3xx with an empty Location, goes back to the URL on a #fragment, names a bad Location's fault", function()
      local seen = {}
      local server <close> = http.serve("127.0.0.1", 0, function(req)
        seen[#seen + 1] = req.path .. "?" .. req.raw_query
        local to = ({ ["/empty"] = "", ["/blank"] = " ", ["/frag/x"] = "#f", ["/bad"] = "http://exa mple.invalid/" })[req.path]
        return { status = 302, headers = { Location = to } }
      end)
      for _, f in ipairs({ http.get, http.post }) do
        assert.equals(302, f(server:url("/empty")).status) -- as curl and aiohttp
        assert.equals(302, f(server:url("/blank")).status)
      end
      seen = {}
      assert.equals("too_many_redirects", (errkind(http.get, server:url("/frag/x?q=1"), { max_redirects = 2 })))
      assert.same({ "/frag/x?q=1", "/frag/x?q=1", "/frag/x?q=1" }, seen) -- (curl 7.88 went to /frag/)
      local kind, e = errkind(http.get, server:url("/bad"))
      assert.equals("invalid_url", kind)
      assert.matches("Location \"http://exa mple.invalid/\" is not a URL (a control character or a space in the host", e.message, 1, true)
    end)

    it("follows a Location without the spaces and tabs around it (RFC 9110 5.5), as curl did", function()
      local server <close> = http.serve("127.0.0.1", 0, function(req)
        if req.path == "/a" then return { status = 302, headers = { Location = "/end " } } end
        if req.path == "/b" then return { status = 302, headers = { Location = " \t/end\t" } } end
        return req.url
      end)
      for _, f in ipairs({ http.get, http.post }) do
        assert.equals("/end", f(server:url("/a")).body) -- (it went to /end%20)
        assert.equals("/end", f(server:url("/b")).body)
      end
    end)

    it("follows a Location whose host name is past ASCII to its IDNA form", function()
      local server <close> = http.serve("127.0.0.1", 0, function(req)
        if req.path == "/end" then return req.headers.host end
        return { status = 302, headers = { Location = ("http://bücher.localhost:%d/end"):format(req.query.p) } }
      end)
      for _, f in ipairs({ http.get, http.post }) do
        assert.equals("xn--bcher-kva.localhost:" .. server:port(), f(server:url("/to?p=" .. server:port())).body)
      end
    end)

    it("gives timings over every hop: each added up, and redirect the time before the last", function()
      local server <close> = http.serve("127.0.0.1", 0, function(req)
        if req.path == "/end" then return "ok" end
        tide.sleep(0.2)
        return { status = 302, headers = { Location = "/end" } }
      end)
      for _, f in ipairs({ http.get, http.put }) do
        local res = f(server:url("/slow"))
        assert.equals(1, res.redirects)
        assert.is_true(res.timings.redirect >= 0.2, "redirect " .. res.timings.redirect)
        assert.is_true(res.timings.total >= res.timings.redirect, "total " .. res.timings.total)
        assert.is_true(res.timings.first_byte >= 0.2, "first_byte " .. res.timings.first_byte)
      end
    end)

    it("returns the redirect itself with max_redirects = 0", function()
      local res = http.get(url("/redirect/1"), { max_redirects = 0 })
      assert.equals(302, res.status)
      assert.truthy(res.headers.location)
    end)

    it("stops a redirect loop with kind too_many_redirects", function()
      local kind, e = errkind(http.get, url("/loop"), { max_redirects = 5 })
      assert.equals("too_many_redirects", kind)
      assert.truthy(e.message:find("/loop", 1, true))
    end)

    -- RFC 9110 15.4, as aiohttp and browsers: 303 makes a GET without the
    -- body (any method but HEAD), 301 and 302 do so for POST only, 307 and
    -- 308 keep the method and the body.
    local function expected(method, code)
      if code == 303 or (method == "POST" and code <= 302) then return "GET", "" end
      return method, "DATA"
    end

    it("switches to GET as RFC 9110 says, and keeps method and body on 307 and 308", function()
      for _, method in ipairs({ "POST", "PUT", "PATCH", "DELETE" }) do
        for _, code in ipairs({ 301, 302, 303, 307, 308 }) do
          local res = http.request(method, url("/redirect-to?url=/anything&status=" .. code), { body = "DATA" })
          local e, want, body = echo(res), expected(method, code)
          assert.equals(want, e.method, method .. " " .. code)
          assert.equals(body, e.body, method .. " " .. code)
          assert.equals(want, res.method)
          assert.equals(1, res.redirects)
          assert.equals(url("/anything"), res.url)
        end
      end
    end)

    it("drops the body's Content-Type with the body, and sends an array body again on 307 and 308", function()
      for _, code in ipairs({ 301, 302, 303, 307, 308 }) do
        local to = url("/redirect-to?url=/anything&status=" .. code)
        local keep = code >= 307
        local e = echo(http.post(to, { json = { a = 1 } }))
        assert.equals(keep and "application/json" or nil, e.headers["content-type"], code)
        assert.equals(keep and '{"a":1}' or "", e.body, code)
        e = echo(http.post(to, { form = { a = 1 } }))
        assert.equals(keep and "application/x-www-form-urlencoded" or nil, e.headers["content-type"], code)
        e = echo(http.post(to, { body = { "ab", "cd" } }))
        assert.equals(keep and "abcd" or "", e.body, code)
        assert.equals(keep and "POST" or "GET", e.method, code)
        if code == 303 then -- any method: a GET without the body
          assert.equals("GET", echo(http.put(to, { body = function() return nil end })).method)
        else -- PUT keeps its body on 301 and 302 too
          local kind, err = errkind(http.put, to, { body = function() return nil end })
          assert.equals("http_transfer", kind, code)
          assert.matches("needs the body sent again", err.message)
        end
      end
    end)

    it("does the same with tide's own server, and keeps credentials to the same origin only", function()
      local server <close> = http.serve("127.0.0.1", 0, function(req)
        if req.path == "/to" then
          return { status = tonumber(req.query.status), headers = { Location = req.query.url } }
        end
        return req.method .. " " .. req.body .. " " .. tostring(req.headers.authorization)
      end)
      for _, method in ipairs({ "POST", "PUT" }) do
        for _, code in ipairs({ 301, 302, 303, 307, 308 }) do
          local res = http.request(method, server:url("/to?url=/echo&status=" .. code),
            { body = "DATA", headers = { Authorization = "Bearer x" } })
          local want, body = expected(method, code)
          assert.equals(("%s %s Bearer x"):format(want, body), res.body, method .. " " .. code)
        end
      end
      local res = http.put(url("/redirect-to?status=307&url=" .. http.urlencode({ u = server:url("/echo") }):sub(3)),
        { body = "DATA", headers = { Authorization = "Bearer x" } })
      assert.equals("PUT DATA nil", res.body)
    end)

    it("counts redirects it follows for other methods against max_redirects", function()
      local res = http.put(url("/redirect-to?url=/anything&status=303"), { max_redirects = 0 })
      assert.equals(303, res.status)
      assert.equals(0, res.redirects)
      local kind, e = errkind(http.delete, url("/loop"), { max_redirects = 3 })
      assert.equals("too_many_redirects", kind)
      assert.truthy(e.message:find("DELETE " .. url("/loop"), 1, true), e.message)
      res = http.put(url("/redirect/3"), { body = "DATA", stream = true })
      assert.equals(3, res.redirects)
      assert.equals(url("/get"), res.url)
      assert.equals(200, res.status)
      res:close()
    end)

    it("a followed redirect uses only its own request's options, whatever other tasks ask meanwhile", function()
      -- PUT is followed by tide; meanwhile another task's request sets http_version 1.0
      local server <close> = http.serve("127.0.0.1", 0, function(req)
        if req.path == "/to" then
          tide.sleep(0.2)
          return { status = 307, headers = { Location = "/hop" } }
        end
        return req.method .. " " .. req.version .. " " .. tostring(req.headers.cookie)
      end)
      local s = http.session { cookies = { secret = "B" } }
      local a = tide.spawn(http.put, server:url("/to"), { body = "a" })
      tide.sleep(0.05)
      s:get(server:url("/hop"), { http_version = "1.0" })
      assert.equals("PUT 1.1 nil", a:await().body)
      s:close()
    end)

    it("counts timeout over every hop it follows, as curl does for the ones it follows", function()
      local server <close> = http.serve("127.0.0.1", 0, function(req)
        local n = tonumber(req.path:match("^/hop/(%d+)$"))
        tide.sleep(0.3)
        if n and n > 0 then return { status = 307, headers = { Location = "/hop/" .. (n - 1) } } end
        return "end"
      end)
      local t0 = tide.time()
      assert.equals("timeout", (errkind(http.put, server:url("/hop/3"), { body = "x", timeout = 0.5 })))
      assert.is_true(tide.time() - t0 < 0.9, "took " .. tide.time() - t0)
      local kind, e = errkind(http.get, server:url("/hop/1"), { timeout = 0.5 })
      assert.equals("timeout", kind) -- the whole time, not curl's for the last hop
      assert.matches("/hop/0: timed out after 500 milliseconds (timeout, over 1 redirect(s))", e.message, 1, true)
    end)

    it("refuses a Location that is not http or https for every method", function()
      local server <close> = http.serve("127.0.0.1", 0, function()
        return { status = 302, headers = { Location = "javascript:alert(1)" } }
      end)
      assert.equals("invalid_url", (errkind(http.put, server:url("/"), { body = "x" })))
      assert.equals("invalid_url", (errkind(http.get, server:url("/"))))
    end)

    it("joins a Cookie header of the caller's with the session's cookies in one line", function()
      local server <close> = http.serve("127.0.0.1", 0, function(req)
        if req.path == "/set" then return { headers = { ["Set-Cookie"] = "a=1; Path=/" } } end
        if req.path == "/away" then
          return { status = 302, headers = { Location = req.query.to } }
        end
        return table.concat(req.headers:get_all("cookie"), " | ")
      end)
      local s = http.session { cookies = true }
      s:get(server:url("/set"))
      assert.equals("a=1; h=1", s:get(server:url("/echo"), { headers = { Cookie = "h=1" } }).body)
      s:close()
      s = http.session { cookies = { x = "1" } }
      assert.equals("x=1; h=1", s:get(server:url("/echo"), { headers = { Cookie = "h=1" } }).body)
      -- to another origin (here: 127.0.0.1 vs localhost) the caller's Cookie does not follow
      local other = server:url("/echo"):gsub("127%.0%.0%.1", "localhost")
      assert.equals("x=1", s:get(server:url("/away?to=" .. http.urlencode({ u = other }):sub(3)),
        { headers = { Cookie = "h=1" } }).body)
      s:close()
    end)
  end)

  describe("errors", function()
    local refused
    before_each(function() refused = "http://127.0.0.1:" .. servers.free_port() .. "/" end)

    it("a response whose first header line is folded is kind protocol, on a session's second request too (libcurl 7.88 read freed memory there)", function()
      local s <close> = http.session()
      for _ = 1, 3 do
        assert.equals(200, s:get(url("/get")).status)
        assert.equals("protocol", (errkind(s.get, s, url("/folded-first"))))
      end
    end)

    it("reads obs-folded header lines as one value, the fold's blanks kept, as aiohttp (RFC 9112 5.2)", function()
      -- a continuation line was read as a header named "  b"
      local res = http.get(url("/folded"))
      assert.equals(200, res.status)
      assert.equals("a  b: c", res.headers["x-fold"])
      assert.equals("1\t2", res.headers["x-tab"])
      assert.same({ { "X-Fold", "a  b: c" }, { "X-Tab", "1\t2" }, { "Content-Length", "2" } }, res.headers:list())
    end)

    it("a failed transfer lets go of its body at once, not when the collector comes", function()
      local function rss()
        return tonumber(io.open("/proc/self/status"):read("a"):match("VmRSS:%s*(%d+)")) * 1024
      end
      collectgarbage("stop") -- what the collector would free is not the point
      local before = rss()
      for _ = 1, 10 do
        assert.equals("too_large", (errkind(http.get, url("/stream-bytes/10000000?chunk=65536"), { max_body_size = 8000000 })))
      end
      local grew = rss() - before
      collectgarbage("restart")
      assert.is_true(grew < 40e6, ("RSS grew by %d bytes"):format(grew))
    end)

    it("takes no server's word for the room a body needs (a 16 TB Content-Length, no max_body_size)", function()
      local net = require "tide.net"
      local srv <close> = net.serve("127.0.0.1", 0, function(st)
        st:read_until("\r\n\r\n")
        st:write("HTTP/1.1 200 OK\r\nContent-Length: 17592186044416\r\n\r\nabc")
        st:close()
      end)
      local kind = errkind(http.get, ("http://127.0.0.1:%d/"):format(srv:port()), { max_body_size = false })
      assert.equals("reset", kind)
    end)

    it("takes a malformed head as kind protocol and curl's limits on heads and trailers as too_large", function()
      local net = require "tide.net"
      local big = ("X-Big: " .. ("b"):rep(50000) .. "\r\n"):rep(7) -- 350 KB, each line under 100 KB
      local replies = {
        ["/nocode"] = "HTTP/200 OK\r\nContent-Length: 5\r\n\r\nhello",
        ["/twolengths"] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 10\r\n\r\nokHTTP/1.1",
        ["/lengthlist"] = "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ["/nocodebig"] = "HTTP/200 OK\r\nContent-Length: 300000\r\n\r\n" .. ("x"):rep(300000),
        ["/bighead"] = "HTTP/1.1 200 OK\r\n" .. big .. "Content-Length: 2\r\n\r\nok",
        ["/bigtrailer"] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: "
          .. ("t"):rep(5000) .. "\r\n\r\n",
      }
      local srv <close> = net.serve("127.0.0.1", 0, function(st)
        local path = st:read_line():match("^GET (%S+)")
        st:read_until("\r\n\r\n")
        st:write(replies[path])
        st:close()
      end)
      local base = "http://127.0.0.1:" .. srv:port()
      for path, want in pairs({ ["/nocode"] = "protocol", ["/twolengths"] = "protocol",
          ["/lengthlist"] = "protocol", ["/bighead"] = "too_large", ["/bigtrailer"] = "too_large" }) do
        local kind, e = errkind(http.get, base .. path)
        assert.equals(want, kind, path .. ": " .. tostring(e))
      end
      -- a stream returns at the head: refused there, not later in its body
      assert.equals("protocol", (errkind(http.get, base .. "/nocodebig", { stream = true })))
    end)

    it("a streamed response's idle_timeout counts the head's bytes too", function()
      local net = require "tide.net"
      local head = "HTTP/1.1 200 OK\r\nX-Slow: " .. ("s"):rep(12) .. "\r\nContent-Length: 2\r\n\r\n"
      local srv <close> = net.serve("127.0.0.1", 0, function(st)
        st:read_until("\r\n\r\n")
        for i = 1, #head, 4 do st:write(head:sub(i, i + 3)); tide.sleep(0.05) end -- ~0.6 s in all
        st:write("ok")
        st:close()
      end)
      local res = http.get("http://127.0.0.1:" .. srv:port() .. "/", { stream = true, idle_timeout = 0.3 })
      assert.equals("ok", res:read_all())
    end)

    it("gives each fault its kind, names the URL, and leaves no fd behind", function()
      local replies = { -- a server that does not speak HTTP
        ["/09"] = "garbage\r\n\r\n", ["/colon"] = "HTTP/1.1 200 OK\r\nno colon\r\n\r\n" }
      local net = require "tide.net"
      local garbage <close> = net.serve("127.0.0.1", 0, function(st)
        st:write(replies[st:read_line():match("^GET (%S+)")])
      end)
      local bad = "http://127.0.0.1:" .. garbage:port()
      url("/get") -- httpbin's fds are not ours
      local base = fds()
      do
        local s <close> = http.session()
        local function get(u, opts) return s:get(u, opts) end
        local cases = {
          { "connect", function() return get(refused) end },
          { "dns", function() return get("http://no-such-host.invalid/") end },
          { "reset", function() return get(url("/reset?after=1000&delay=0.1")) end },
          { "timeout", function() return get(url("/hang"), { timeout = 0.3 }) end },
          { "too_large", function() return get(url("/bytes/100000"), { max_body_size = 1000 }) end },
          { "too_large", function() return get(url("/stream-bytes/100000"), { max_body_size = 1000 }) end },
          { "too_many_redirects", function() return get(url("/loop")) end },
          { "invalid_url", function() return get("http://exa mple.com:99999999/") end },
          { "invalid_url", function() return get("ftp://127.0.0.1/file") end },
          { "invalid_url", function() return get("not a url") end },
          { "invalid_url", function() return get(url("/redirect-to?url=ftp://127.0.0.1/f")) end },
          { "protocol", function() return get(bad .. "/09") end },
          { "protocol", function() return get(bad .. "/colon") end },
        }
        for _, c in ipairs(cases) do
          local kind, e = errkind(c[2])
          assert.equals(c[1], kind, tostring(e))
          assert.is_string(e.url)
          assert.truthy(e.message:find(e.url, 1, true))
        end
      end
      fds_back(base)
    end)

    it("leaves a URL's password out of the error's message and url field", function()
      local _, e = errkind(http.get, refused:gsub("^http://", "http://alice:s3cret@") .. "x")
      assert.equals("connect", e.kind)
      assert.is_nil(e.message:find("s3cret", 1, true))
      assert.is_nil(e.url:find("s3cret", 1, true))
      assert.matches("http://alice:***@127.0.0.1:", e.message, 1, true)
      -- a password with '@' or '#', and the errors tide raises itself
      local hidden = "p@s#s"
      local function check(err)
        assert.is_nil(err.message:find(hidden, 1, true), err.message)
        assert.is_nil((err.url or ""):find(hidden, 1, true), err.url)
      end
      local base = refused:gsub("^http://", "http://alice:" .. hidden .. "@")
      check(select(2, errkind(http.get, base .. "x")))
      check(select(2, errkind(http.get, url("/loop"):gsub("^http://", "http://alice:" .. hidden .. "@"),
        { max_redirects = 1 })))
      local s = http.session()
      s:close()
      check(select(2, errkind(s.get, s, base)))
    end)

    it("reports a reset in the middle of the body as a failed receive, not a failed send", function()
      local kind, e = errkind(http.get, url("/reset?after=1000&delay=0.1"))
      assert.equals("reset", kind)
      assert.equals(56, e.curl_code, e.message)
      assert.matches("Recv failure", e.message)
      local res = http.get(url("/reset?after=1000&delay=0.1"), { stream = true })
      kind, e = errkind(function() while res:read() do end end)
      assert.equals("reset", kind)
      assert.equals(56, e.curl_code, e.message)
    end)

    it("a response header over curl's 100 KB limit is kind too_large, saying so", function()
      local net = require "tide.net"
      local srv <close> = net.serve("127.0.0.1", 0, function(c)
        c:read()
        c:write("HTTP/1.1 200 OK\r\nX-Big: " .. ("a"):rep(110000) .. "\r\nContent-Length: 2\r\n\r\nok")
      end)
      local kind, e = errkind(http.get, "http://127.0.0.1:" .. srv:port() .. "/")
      assert.equals("too_large", kind)
      assert.matches("response header is over curl's limit", e.message, 1, true)
    end)

    it("refuses query and form values that cannot be sent, and more than one body option", function()
      S.raises_matching("(opts.query: value of 'a' must be a string, number or boolean, got table)",
        http.get, url("/get"), { query = { a = { 1, { 2 } } } })
      S.raises_matching("(opts.query: value of 'a' is a table that is not an array)",
        http.get, url("/get"), { query = { a = { x = 1 } } })
      S.raises_matching("(opts.form: value of 'a' must be a string, number or boolean, got function)",
        http.post, url("/anything"), { form = { a = print } })
      S.raises_matching("(opts.body, opts.json and opts.form: give one of them)",
        http.post, url("/anything"), { json = { b = 1 }, body = "RAW" })
      assert.equals("invalid_url", (errkind(http.get, "127.0.0.1:1/x")))
    end)

    it("takes math.huge as no limit for max_body_size and max_redirects, and refuses fractions", function()
      assert.equals(200, http.get(url("/bytes/5"), { max_body_size = math.huge }).status)
      assert.equals(200, http.get(url("/redirect/2"), { max_redirects = math.huge }).status)
      S.raises_matching("(opts.max_redirects: an integer or math.huge expected, got 1.5)",
        http.get, url("/get"), { max_redirects = 1.5 })
    end)

    it("rejects bad arguments naming the argument", function()
      S.raises_matching("bad argument #1 to 'get' (URL string expected, got nil)", http.get)
      S.raises_matching("bad argument #2 to 'get' (unknown option 'timout')", http.get, url("/get"), { timout = 1 })
      S.raises_matching("bad argument #2 to 'post' (opts.timeout: number or false expected, got string)",
        http.post, url("/get"), { timeout = "5" })
      S.raises_matching("bad argument #2 to 'get' (table of options expected, got string)", http.get, url("/get"), "x")
      S.raises_matching("bad argument #2 to 'post' (opts.json: Cannot serialise function", http.post, url("/get"),
        { json = { f = print } })
      S.raises_matching("bad argument #1 to 'request' (HTTP method expected, got \"GE T\")", http.request, "GE T", url("/get"))
      S.raises_matching("contains a line break", http.get, url("/get"), { headers = { X = "a\r\nInjected: 1" } })
      S.raises_matching("bad argument #1 to 'session' (unknown option 'max_per_hots')", http.session, { max_per_hots = 1 })
      S.raises_matching("opts.http_version", http.get, url("/get"), { http_version = "9" })
      S.raises_matching("(opts.timeout: number or false expected, got true)", http.get, url("/get"), { timeout = true })
      S.raises_matching("(opts.max_body_size: number or false expected, got true)", http.get, url("/get"), { max_body_size = true })
      S.raises_matching("(opts.timeout: a positive number expected, got 0)", http.get, url("/get"), { timeout = 0 })
      S.raises_matching("(opts.connect_timeout: a positive number expected, got -1)", http.get, url("/get"), { connect_timeout = -1 })
      S.raises_matching("bad argument #1 to 'session' (opts.max_per_host: a non-negative number expected, got -2)", http.session, { max_per_host = -2 })
    end)

    it("refuses values it would have sent as garbage or dropped, at the call that gave them", function()
      S.raises_matching("bad argument #1 to 'session' (opts.cookies: names and values must be strings",
        http.session, { cookies = { a = {} } })
      S.raises_matching("bad argument #1 to 'session' (opts.headers: bad header name", http.session, { headers = { "x" } })
      S.raises_matching("bad argument #1 to 'session' (opts.http_version", http.session, { http_version = "9" })
      S.raises_matching("bad argument #2 to 'get' (opts.headers: value of 'X-A' is a table that is not an array)",
        http.get, url("/get"), { headers = { ["X-A"] = { k = "v" } } })
      S.raises_matching("bad argument #2 to 'get' (opts.headers: value of 'X-A' contains a zero byte)",
        http.get, url("/get"), { headers = { ["X-A"] = "a\0b" } }) -- curl would cut it there
      S.raises_matching("bad argument #2 to 'post' (opts.body[2]: string expected, got number)",
        http.post, url("/post"), { body = { "a", 2 } })
      S.raises_matching("bad argument #2 to 'post' (opts.body: a table that is not an array of strings)",
        http.post, url("/post"), { body = { "a", nil, "c" } }) -- a hole: ipairs would stop at it
      S.raises_matching("bad argument #1 to 'urlencode' (value of 'a' must be a string, number or boolean, got function)",
        http.urlencode, { a = print })
      S.raises_matching("bad argument #1 to 'urldecode' (string expected, got number)", http.urldecode, 1)
    end)

    it("names the method and the object when a method is called with '.' instead of ':'", function()
      local res = http.get(url("/get"))
      local s <close> = http.session()
      for name, f in pairs({ json = res.json, ok = res.ok, read = res.read, close = res.close,
        raise_for_status = res.raise_for_status }) do
        S.raises_matching(("bad argument #1 to '%s' (tide.http.Response expected, got no value)"):format(name), f)
      end
      S.raises_matching("bad argument #1 to 'get' (tide.http.Session expected, got string)", s.get, "http://x/")
      S.raises_matching("bad argument #1 to 'get_all' (tide.Headers expected, got no value)", res.headers.get_all)
      local server <close> = http.serve("127.0.0.1", 0, function() return "x" end)
      S.raises_matching("bad argument #1 to 'port' (tide.HttpServer expected, got no value)", server.port)
      assert.equals(("http://127.0.0.1:%d/x"):format(server:port()), server:url("x"))
      S.raises_matching("bad argument #1 to 'url' (string expected, got number)", server.url, server, 7)
      -- a JSON error says what is wrong with the body, not where the decoder is
      local e = select(2, pcall(res.json, setmetatable({ body = "{", url = "u" }, getmetatable(res))))
      assert.equals("u: the body is not JSON (Expected object key string but found T_END at character 2)", e.message)
    end)

    it("a failed name lookup leaves nothing behind that breaks another connection or session", function()
      -- curl's resolver thread talks over a socketpair that curl closes
      -- itself: its fd number comes again for the next socket
      local net = require "tide.net"
      local echo_srv = net.serve("127.0.0.1", 0, function(st) st:write(st:read_line() .. "\n") end)
      local srv <close> = http.serve("127.0.0.1", 0, function() return "ok" end)
      local a <close> = http.session()
      local b <close> = http.session()
      assert.equals("ok", b:get(srv:url("/")).body) -- b's connection first
      assert.equals("dns", (errkind(a.get, a, "http://nosuch.invalid/", { timeout = 5 })))
      local c = net.connect("127.0.0.1", echo_srv:port(), { timeout = 3 })
      c:write("hello\n")
      assert.equals("hello", tide.wait_for(c.read_line, 3, c))
      c:close()
      assert.equals("dns", (errkind(a.get, a, "http://nosuch.invalid/", { timeout = 5 })))
      local other <close> = http.serve("127.0.0.1", 0, function() return "other" end)
      assert.equals("other", b:get(other:url("/"), { timeout = 3 }).body)
      echo_srv:close()
    end)

    it("has fds back at baseline after 10,000 faulted requests", function()
      local base = fds()
      local session <close> = http.session()
      local n, kinds = 0, {}
      local function worker()
        while n < 10000 do
          n = n + 1
          local target = n % 2 == 0 and refused or "bad://x"
          local ok, e = pcall(session.get, session, target)
          assert.is_false(ok)
          kinds[e.kind] = (kinds[e.kind] or 0) + 1
        end
      end
      local ws = {}
      for i = 1, 50 do ws[i] = tide.spawn(worker) end
      tide.gather(ws)
      assert.same({ connect = 5000, invalid_url = 5000 }, kinds)
      session:close()
      fds_back(base)
    end)
  end)

  describe("session", function()
    it("has an engine (tide.http.core) that takes a request spec without header lines", function()
      local core = require "tide.http.core" -- (it crashed on one: the stack lost a slot)
      local cs = core.session({})
      local x, ev = cs:request({ method = "GET", url = url("/get") })
      assert.equals("done", ev)
      assert.equals(200, x:response().status)
      cs:close()
    end)

    it("keeps its headers as given: changing the table after changes no request", function()
      local hs = { ["X-Token"] = "one", ["X-List"] = { "a" } }
      local s <close> = http.session({ headers = hs })
      assert.equals("one", echo(s:get(url("/get"))).headers["x-token"])
      hs["X-Token"], hs["X-List"][2] = "two", "b"
      for _, opts in ipairs({ false, {} }) do -- with and without options alike
        local h = echo(s:get(url("/get"), opts or nil)).headers
        assert.equals("one", h["x-token"])
        assert.equals("a", h["x-list"])
      end
    end)

    it("does not send a POST again when a kept-alive connection closes without an answer", function()
      -- curl 7.88 sent it again on a new connection: the server saw it twice
      local s <close> = http.session()
      local function sent(method, opts)
        assert.equals(200, s:get(url("/get")).status) -- a kept-alive connection
        local before = hb.stats().requests_total
        local _, e = errkind(s.request, s, method, url("/close"), opts)
        return e, hb.stats().requests_total - before
      end
      local e, n = sent("POST", { body = "pay $100" })
      assert.equals("reset", e.kind)
      assert.matches("closed the connection without an answer, and a POST is not sent again", e.message, 1, true)
      assert.equals(1, n)
      e, n = sent("PATCH", { body = "x" })
      assert.equals("reset", e.kind)
      assert.equals(1, n)
      local chunks = { "a", "b" }
      e, n = sent("PUT", { body = function() return table.remove(chunks, 1) end })
      assert.equals("reset", e.kind)
      assert.matches("a request whose body a function or an array gives is not sent again", e.message, 1, true)
      assert.equals(1, n)
      -- an idempotent request is sent again, as aiohttp does: the new
      -- connection is closed too, so the server sees it twice
      e, n = sent("PUT", { body = "x" })
      assert.equals("reset", e.kind)
      assert.equals(2, n)
      assert.equals(200, s:post(url("/anything"), { body = "ok" }).status) -- the session goes on
    end)

    it("reuses connections (keep-alive)", function()
      servers.httpbin().reset_stats()
      local s <close> = http.session()
      for i = 1, 10 do assert.equals(200, s:get(url("/get?i=" .. i)).status) end
      assert.equals(1, hb.stats().connections_total)
    end)

    it("a request carries none of the options of the one before it on the same handle", function()
      -- one task, one session: each request gets the easy handle the one before it
      -- had, which keeps the options every request sets and is reset after others
      local s <close> = http.session()
      local function plain()
        local e = echo(s:get(url("/anything")))
        assert.equals("GET", e.method)
        assert.equals(0, e.body_length)
        assert.is_nil(e.headers["content-length"])
        assert.is_nil(e.headers["transfer-encoding"])
        assert.is_nil(e.headers["x-a"])
        assert.is_nil(e.headers["content-type"])
        assert.is_nil(e.headers.cookie)
        return e
      end
      assert.equals("", s:head(url("/bytes/1000")).body)
      assert.equals(1000, #s:get(url("/bytes/1000")).body)
      assert.equals("POST", echo(s:post(url("/anything"), { body = "x", headers = { ["X-A"] = "1" } })).method)
      plain()
      assert.equals("PUT", echo(s:put(url("/anything"), { json = { a = 1 } })).method)
      plain()
      s:post(url("/anything"), { body = function() return nil end })
      plain()
      assert.equals("a=1", echo(s:get(url("/anything"), { headers = { Cookie = "a=1" } })).headers.cookie)
      plain()
      assert.equals("example.invalid", echo(s:get("http://example.invalid/get", { proxy = hb.base })).headers.host)
      assert.equals("dns", errkind(s.get, s, "http://example.invalid/get"))
      assert.equals("too_large", errkind(s.get, s, url("/bytes/100"), { max_body_size = 10 }))
      assert.equals(100, #s:get(url("/bytes/100")).body)
      assert.equals(302, s:get(url("/redirect/1"), { max_redirects = 0 }).status)
      assert.equals(200, s:get(url("/redirect/1")).status)
      assert.equals("timeout", errkind(s.get, s, url("/delay/1"), { timeout = 0.1 }))
      assert.equals(200, s:get(url("/delay/0.3")).status)
      assert.equals("HTTP/1.0", echo(s:get(url("/get"), { http_version = "1.0" })).http_version)
      assert.equals("HTTP/1.1", echo(s:get(url("/get"))).http_version)
    end)

    it("leaves no socket of its own open in a child process", function()
      local process = require "tide.process"
      local function child_fds()
        return process.run({ "sh", "-c", "ls /proc/self/fd" }).stdout
      end
      local u = url("/get") -- the server runs before the count
      local before = child_fds()
      local s <close> = http.session() -- a multi of its own: curl's wakeup sockets
      assert.equals(200, s:get(u).status)
      assert.equals(before, child_fds())
    end)

    it("keeps connections alive under concurrency (no cache churn)", function()
      servers.httpbin().reset_stats()
      local s <close> = http.session()
      local function worker() for _ = 1, 20 do s:get(url("/get")) end end
      local ws = {}
      for i = 1, 40 do ws[i] = tide.spawn(worker) end
      tide.gather(ws)
      assert.is_true(hb.stats().connections_total <= 40, "connections opened: " .. hb.stats().connections_total)
    end)

    it("neither spins nor fails when the server closes a kept-alive connection while it is idle", function()
      -- The engine keeps polling a connection curl put back in its cache
      -- (no epoll_ctl per request); the server's close must stop that.
      local server <close> = http.serve("127.0.0.1", 0, function()
        return { status = 200, body = "ok" }
      end, { idle_timeout = 0.05 })
      local u = ("http://127.0.0.1:%d/"):format(server:port())
      local s <close> = http.session()
      local base = fds()
      assert.equals("ok", s:get(u).body)
      local cpu = os.clock()
      tide.sleep(0.5) -- the server drops the connection after 0.05 s
      assert.is_true(os.clock() - cpu < 0.1, ("the idle loop used %.2f s of CPU"):format(os.clock() - cpu))
      assert.equals("ok", s:get(u).body)
      assert.equals("ok", s:get(u).body)
      s:close()
      fds_back(base)
    end)

    it("times out a request waiting for a free connection at its own timeout, saying so", function()
      -- curl 7.88 kept it waiting until a connection was free (5 s here), then
      -- said "Failed to resolve host '127.0.0.1' with timeout after 0 ms"
      local s <close> = http.session { max_per_host = 1 }
      local first = tide.spawn(s.get, s, url("/hang"), { timeout = 5 }) -- holds the connection
      tide.sleep(0.1)
      local second = tide.spawn(s.get, s, url("/get"), { timeout = 0.3 })
      tide.wait({ first, second }, { return_when = "first_completed" })
      assert.is_false(first:done())
      local kind, e = errkind(second.await, second)
      assert.equals("timeout", kind)
      assert.matches("timed out (timeout 300 ms) waiting for a free connection (the session's max_per_host 1)",
        e.message, 1, true)
      first:cancel()
      assert.equals(200, s:get(url("/get")).status)
    end)

    it("keeps curl's reason for a timeout of a limited session's request that did not wait (slow DNS)", function()
      local so, bin = os.getenv("TIDE_SLOWDNS"), os.getenv("TIDE_BIN")
      if not so or not bin then pending("run through ctest (needs TIDE_SLOWDNS, TIDE_BIN)") return end
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write([[
        local http = require "tide.http"
        local s = http.session { max_per_host = 4 }
        print(select(2, pcall(s.get, s, "http://stalled.slow:1/", { timeout = 0.3 })))
      ]])
      f:close()
      local p = io.popen(("LD_PRELOAD=%s ASAN_OPTIONS=verify_asan_link_order=0 %s %s 2>&1"):format(so, bin, script))
      local out = p:read("a")
      p:close()
      os.remove(script)
      -- it said "waiting for a free connection", which it never did
      assert.matches("timeout: GET http://stalled.slow:1/: Timeout was reached (Resolving timed out after", out, 1, true)
    end)

    it("caps connections per host with max_per_host (counted by the server)", function()
      local open = servers.httpbin().reset_stats().connections_open -- other sessions' idle ones
      local s <close> = http.session { max_per_host = 3 }
      local tasks = {}
      for i = 1, 12 do tasks[i] = tide.spawn(s.get, s, url("/delay/0.1")) end
      tide.gather(tasks)
      local st = hb.stats()
      assert.equals(3, st.connections_total)
      assert.is_true(st.max_connections_open <= open + 3)
    end)

    it("joins base_url, merges default headers and keeps a cookie jar", function()
      local s <close> = http.session { base_url = url("/"), headers = { ["X-App"] = "tide" }, timeout = 5 }
      local e = echo(s:get("/get", { headers = { ["X-Req"] = "1" } }))
      assert.equals("tide", e.headers["x-app"])
      assert.equals("1", e.headers["x-req"])
      local over = echo(s:get("get", { headers = { ["x-app"] = "mine" } }))
      assert.equals("mine", over.headers["x-app"]) -- the request's own value wins
      s:get("/cookies/set?flavour=oat")
      for _ = 1, 3 do -- handles are reused: the jar must stay on
        assert.same({ flavour = "oat" }, s:get("/cookies"):json().cookies)
      end
      local both = tide.gather({ tide.spawn(s.get, s, "/cookies/set?x=1"), tide.spawn(s.get, s, "/cookies") })
      assert.equals("oat", both[2]:json().cookies.flavour)
      assert.same({ flavour = "oat", x = "1" }, s:get("/cookies"):json().cookies)
      -- module-level calls have no jar
      assert.same({}, http.get(url("/cookies")):json().cookies)
    end)

    it("sends fixed cookies given as a table", function()
      local s <close> = http.session { cookies = { a = "1" } }
      assert.same({ a = "1" }, s:get(url("/cookies")):json().cookies)
    end)

    it("is kind invalid_state at the caller's line when used in another run (tide.run)", function()
      local s <close> = http.session()
      assert.equals(200, s:get(url("/get")).status)
      local ok, e = pcall(tide.run, function() local res = s:get(url("/get")); return res end)
      assert.is_false(ok)
      assert.equals("invalid_state", e.kind) -- (it was a string)
      assert.matches("^spec/http_spec.lua:%d+: this HTTP session belongs to another run", e.message)
    end)

    it("puts the cookies given as a table in its jar: one the server sets of the same name replaces it, as aiohttp's", function()
      local server <close> = http.serve("127.0.0.1", 0, function(req)
        if req.path == "/set" then return { headers = { ["Set-Cookie"] = "a=9; Path=/" } } end
        if req.path == "/set-host" then return { headers = { ["Set-Cookie"] = "__Host-h=9; Secure; Path=/" } } end
        if req.path == "/r" then return { status = 302, headers = { Location = "/echo", ["Set-Cookie"] = "b=2; Path=/" } } end
        return tostring(req.headers.cookie)
      end)
      local s <close> = http.session { cookies = { a = "1", c = 3 } }
      assert.equals("c=3; a=1", s:get(server:url("/echo")).body)
      s:get(server:url("/set"))
      assert.equals("c=3; a=9", s:get(server:url("/echo")).body) -- (it sent "a=9; c=3; a=1")
      assert.equals("b=2; c=3; a=9", s:get(server:url("/r")).body)
      local other = server:url("/echo"):gsub("127%.0%.0%.1", "localhost") -- every host gets them
      assert.equals("c=3; a=1", s:get(other).body)
      -- __Secure- and __Host- names go in as Secure (curl's jar takes them no other way;
      -- 127.0.0.1 counts as secure), and the server's of the same name replaces them too
      local p <close> = http.session { cookies = { ["__Secure-id"] = "1", ["__Host-h"] = "2", ok = "3" } }
      assert.equals("__Secure-id=1; __Host-h=2; ok=3", p:get(server:url("/echo")).body) -- (only ok=3)
      p:get(server:url("/set-host"))
      assert.equals("__Secure-id=1; __Host-h=9; ok=3", p:get(server:url("/echo")).body)
      assert.has_error(function() http.session { cookies = { ["a b"] = "1" } } end,
        "bad argument #1 to 'session' (opts.cookies: \"a b\" = \"1\" is not a cookie (a name "
        .. "without spaces, '=', ';' or ',', a value without ';' or control characters))")
    end)

    it("refuses use after close and closes with <close>", function()
      local s = http.session()
      do
        local scoped <close> = s
        assert.equals(200, s:get(url("/get")).status)
      end
      local kind, e = errkind(s.get, s, url("/get"))
      assert.equals("closed", kind)
      assert.equals("GET " .. url("/get") .. ": the HTTP session was closed", e.message)
      assert.equals(url("/get"), e.url) -- the message names the URL, as every HTTP error's
    end)

    it("names the caller's function when called outside a task", function()
      local u, done, msg = url("/get"), tide.Event(), nil
      tide.call_soon(function()
        local _, e = pcall(function()
          local res = http.get(u) -- this line is named
          return res
        end)
        msg = e
        done:set()
      end)
      S.await(function() done:wait() end)
      assert.equals("invalid_state", msg.kind)
      assert.matches("^spec/http_spec%.lua:%d+: get must be called from inside a task", msg.message)
    end)

    it("fails requests in flight when closed from a callback, keeps finished ones", function()
      local s = http.session()
      local t = tide.spawn(s.get, s, url("/delay/5"))
      tide.call_later(0.1, function() s:close() end)
      local ok, e = pcall(S.await, t)
      assert.is_false(ok)
      assert.equals("closed", e.kind)
      for _ = 1, 10 do -- B closes the session while A's finished response waits for A
        local s2 = http.session()
        local a = tide.spawn(s2.get, s2, url("/get"))
        local b = tide.spawn(function() local r = s2:get(url("/get")); s2:close(); return r end)
        local rs = tide.gather({ a, b }, { return_exceptions = true })
        assert.equals(200, rs[2].status)
        assert.is_true(rs[1].status == 200 or rs[1].kind == "closed", tostring(rs[1]))
      end
    end)

    it("fails a request in flight when its session is closed", function()
      local s = http.session()
      local t = tide.spawn(s.get, s, url("/delay/5"))
      tide.sleep(0.1)
      s:close()
      local ok, e = pcall(t.await, t)
      assert.is_false(ok)
      assert.equals("closed", e.kind)
    end)
  end)

  describe("stream", function()
    it("keeps the buffer bounded for a reader taking less than there is", function()
      local function rss()
        local f = io.open("/proc/self/status")
        local kb = tonumber(f:read("a"):match("VmRSS:%s*(%d+)"))
        f:close()
        return kb
      end
      local res = http.get(url("/bytes/" .. (32 << 20)), { stream = true })
      local before, got = rss(), 0
      for chunk in res:chunks(65536) do -- a slow reader: the buffer stays full
        got = got + #chunk
        tide.sleep(0.001)
      end
      local grew = rss() - before -- the engine's buffer is still there: not collected yet
      assert.equals(32 << 20, got)
      local maps = io.open("/proc/self/maps"):read("a")
      if not maps:find("libasan", 1, true) then -- ASan's quarantine holds freed memory
        assert.is_true(grew < 16 * 1024, "RSS grew by " .. grew .. " kB")
      end
      res:close()
    end)

    it("returns at the headers and reads the body in chunks", function()
      local t0 = tide.time()
      local res <close> = http.get(url("/stream-bytes/300000?chunk=10000&delay=0.01"), { stream = true })
      assert.equals(200, res.status)
      assert.is_nil(res.body)
      assert.is_true(tide.time() - t0 < 0.2, "waited for the whole body")
      local parts = {}
      for chunk in res:chunks() do parts[#parts + 1] = chunk end
      assert.equals(servers.pattern(300000), table.concat(parts))
      assert.is_nil(res:read())
      assert.equals(1, select("#", res:read()), "one nil, not nothing")
    end)

    it("reads at most n bytes with read(n)", function()
      local res <close> = http.get(url("/bytes/5000"), { stream = true })
      local a = res:read(100)
      assert.equals(100, #a)
      assert.equals(servers.pattern(5000), a .. res:read_all())
    end)

    it("read(0) gives \"\" (nil at the end); a bad count is an error at the caller's line", function()
      local res <close> = http.get(url("/bytes/50"), { stream = true })
      assert.equals("", res:read(0))
      assert.equals(servers.pattern(50), res:read_all())
      assert.is_nil(res:read(0))
      local ok, e = pcall(function() return res:read(-1) end)
      assert.is_false(ok)
      assert.matches("^spec/http_spec.lua:%d+: bad argument #1 to 'read' %(non%-negative byte count", e)
    end)

    it("pauses the transfer while the reader is slow (backpressure)", function()
      local produced, total = 0, 400
      local server <close> = http.serve("127.0.0.1", 0, function()
        return { status = 200, body = function()
          if produced < total then produced = produced + 1; return ("z"):rep(65536) end
        end }
      end)
      local res <close> = http.get(server:url("/big"), { stream = true })
      assert.equals(1, #res:read(1))
      tide.sleep(0.3) -- a slow consumer
      assert.is_true(produced < total / 2, "the producer was not held back: " .. produced)
      local got = 1
      for chunk in res:chunks() do got = got + #chunk end
      assert.equals(total * 65536, got)
    end)

    it("wakes a reader in another task when the response is closed, and refuses a second reader", function()
      local res = http.get(url("/stream-bytes/100000?chunk=10&delay=1"), { stream = true })
      local reader = tide.spawn(function()
        while res:read() do end
      end)
      tide.sleep(0.05)
      S.raises_matching("another task is reading this response", res.read, res)
      res:close()
      local ok, e = pcall(S.await, reader)
      assert.is_false(ok)
      assert.equals("closed", e.kind)
      assert.equals("closed", errkind(res.read, res))
    end)

    it("keeps the stream usable after a cancelled read, losing no bytes", function()
      local res <close> = http.get(url("/stream-bytes/3000?chunk=1000&delay=0.3"), { stream = true })
      local first = res:read()
      assert.equals("timeout", (errkind(tide.wait_for, function() return res:read() end, 0.05)))
      local rest = S.await(function() return res:read_all() end)
      assert.equals(servers.pattern(3000), first .. rest)
    end)

    it("counts an upload still moving as activity for idle_timeout", function()
      local n = 0
      local res <close> = http.post(url("/anything"), { stream = true, idle_timeout = 0.5, body = function()
        n = n + 1
        if n <= 12 then tide.sleep(0.1); return "chunk;" end
      end })
      assert.equals(("chunk;"):rep(12), cjson.decode(res:read_all()).body)
    end)

    it("gives up on a stalled stream after idle_timeout", function()
      local res <close> = http.get(url("/stream-bytes/100?chunk=10&delay=3"), { stream = true, idle_timeout = 1 })
      local kind = errkind(res.read_all, res)
      assert.equals("timeout", kind)
    end)

    it("aborts an unfinished stream on close", function()
      local open = servers.httpbin().reset_stats().connections_open
      local s <close> = http.session()
      s:get(url("/get")) -- the session's own fds (curl's wakeup pair), and one connection
      local base = fds()
      local res = s:get(url("/stream-bytes/1000000?chunk=1000&delay=0.01"), { stream = true })
      res:read()
      -- (open may still count a connection an earlier test closed: at least ours is open)
      assert.is_true(hb.stats().connections_open >= 1)
      res:close()
      hb.wait_stats(function(st) return st.connections_open <= open end)
      fds_back(base - 1) -- the aborted transfer's connection is gone too
    end)
  end)

  describe("cancellation", function()
    it("cancels 1,000 requests in flight at once: tasks cancelled, connections closed, fds back", function()
      local open = servers.httpbin().reset_stats().connections_open
      local base = fds()
      local s = http.session()
      local tasks = {}
      for i = 1, 1000 do tasks[i] = tide.spawn(s.get, s, url("/hang")) end
      hb.wait_stats(function(st) return st.connections_open >= open + 1000 end, 20)
      for _, t in ipairs(tasks) do t:cancel() end
      local results = tide.gather(tasks, { return_exceptions = true })
      for _, r in ipairs(results) do assert.equals("cancelled", r.kind) end
      hb.wait_stats(function(st) return st.connections_open <= open end, 20)
      s:close()
      fds_back(base)
    end)

    it("a request cancelled while curl connects for a redirect leaves the loop sound (curl closes that socket unannounced)", function()
      for _ = 1, 200 do
        pcall(tide.wait_for, http.get, 0.005, url("/redirect-close/0"), { max_redirects = 1000 })
      end
      assert.equals(200, http.get(url("/get")).status)
    end)

    it("wait_for and timeout abort the transfer and the session stays usable", function()
      local s <close> = http.session { max_per_host = 1 }
      local kind = errkind(tide.wait_for, function() return s:get(url("/delay/2?tag=a")) end, 0.2)
      assert.equals("timeout", kind)
      kind = errkind(tide.timeout, 0.2, function() return s:get(url("/delay/2?tag=b")) end)
      assert.equals("timeout", kind)
      local t0 = tide.time()
      local e = echo(s:get(url("/get?tag=c")))
      assert.same({ "c" }, e.query.tag) -- its own response, not a leftover
      assert.is_true(tide.time() - t0 < 1, "waited for the aborted transfer")
    end)

    it("does not stall the loop when cancelled during name resolution", function()
      local so = os.getenv("TIDE_SLOWDNS")
      local bin = os.getenv("TIDE_BIN")
      if not so or not bin then pending("run through ctest (needs TIDE_SLOWDNS, TIDE_BIN)") return end
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write([[
        local tide = require "tide"
        local http = require "tide.http"
        local max_gap, last, running = 0, tide.time(), true
        local ticker = tide.spawn(function()
          while running do
            tide.sleep(0.01)
            local now = tide.time(); max_gap = math.max(max_gap, now - last); last = now
          end
        end)
        local t = tide.spawn(http.get, "http://stalled.slow/")
        tide.sleep(0.1)
        t:cancel()
        pcall(t.await, t)
        tide.sleep(0.1)
        running = false
        ticker:await()
        print(t:cancelled(), max_gap)
      ]])
      f:close()
      local p = io.popen(("LD_PRELOAD=%s ASAN_OPTIONS=verify_asan_link_order=0 %s %s 2>&1"):format(so, bin, script))
      local out = p:read("a")
      p:close()
      os.remove(script)
      local cancelled, gap = out:match("^(%a+)%s+([%d.e-]+)")
      assert.equals("true", cancelled, out)
      assert.is_true(tonumber(gap) < 0.5, "the loop stalled for " .. tostring(gap) .. " s")
    end)
  end)

  describe("TLS and HTTP/2", function()
    local ng
    setup(function() ng = servers.nginx { tls = true, h2 = true } end)
    teardown(function() ng.close() end)

    it("fails verification of a self-signed certificate with kind tls", function()
      local kind, e = errkind(http.get, ng.url("/"))
      assert.equals("tls", kind)
      assert.truthy(e.message:find(ng.url("/"), 1, true))
    end)

    it("succeeds with cafile, or with verify = false", function()
      local res = http.get(ng.url("/"), { cafile = ng.cafile })
      assert.equals(200, res.status)
      assert.equals("ok", res.body)
      assert.equals(200, http.get(ng.url("/"), { verify = false }).status)
    end)

    it("checks the certificate again on the request after one with verify = false or cafile", function()
      local s <close> = http.session()
      assert.equals(200, s:get(ng.url("/"), { verify = false }).status)
      assert.equals("tls", errkind(s.get, s, ng.url("/")))
      assert.equals(200, s:get(ng.url("/"), { cafile = ng.cafile }).status)
      assert.equals("tls", errkind(s.get, s, ng.url("/")))
    end)

    it("multiplexes concurrent requests over one HTTP/2 connection", function()
      local before = ng.connections()
      local s <close> = http.session { cafile = ng.cafile }
      assert.equals("2", s:get(ng.url("/")).http_version)
      local tasks = {}
      for i = 1, 50 do tasks[i] = tide.spawn(s.get, s, ng.url("/big?i=" .. i)) end
      for _, r in ipairs(tide.gather(tasks)) do
        assert.equals("2", r.http_version)
        assert.equals(ng.big_size, #r.body)
      end
      assert.equals(before + 1, ng.connections())
    end)

    it("streams over HTTP/2 with pauses", function()
      local res <close> = http.get(ng.url("/big"), { cafile = ng.cafile, stream = true })
      assert.equals("2", res.http_version)
      local got = 0
      for chunk in res:chunks(4096) do
        got = got + #chunk
        if got % (256 * 1024) < 4096 then tide.sleep(0.01) end
      end
      assert.equals(ng.big_size, got)
    end)
  end)

  describe("with tide's own server", function()
    it("round-trips query, headers, bodies and a streamed response", function()
      local server <close> = http.serve("127.0.0.1", 0, function(req)
        if req.path == "/echo" then
          return { status = 201, headers = { ["X-Method"] = req.method }, body = req.query.n .. ":" .. req.body }
        end
        local i = 0
        return { status = 200, body = function() i = i + 1; if i <= 5 then return "c" .. i end end }
      end)
      local sent
      local res = http.post(server:url("/echo"), { query = { n = 7 }, body = function()
        if not sent then sent = true; return "payload" end
      end })
      assert.equals(201, res.status)
      assert.equals("POST", res.headers["x-method"])
      assert.equals("7:payload", res.body)
      assert.equals("c1c2c3c4c5", http.get(server:url("/stream")).body)
    end)
  end)
end)
