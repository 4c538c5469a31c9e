-- tide.http: the HTTP client (and, through tide.http_server, the server).
--
--   local http = require "tide.http"
--   local res = http.get(url, {query = {n = 1}, timeout = 5})
--   print(res.status, res.headers["content-type"], #res.body)
--
-- Requests suspend the calling task only; the engine is libcurl's multi
-- interface on the tide loop (host/http.c). This file turns options into
-- the engine's request spec and its answers into Response objects, and
-- follows redirects (see REDIRECT).
local tide = require "tide"
local core = require "tide.http.core"
local Headers = require "tide.http_headers"

local M = {}

-- Safe defaults rather than infinite ones.
local DEFAULTS = {
  timeout = 300,          -- s, a whole buffered request
  connect_timeout = 30,   -- s
  idle_timeout = 60,      -- s without a byte, for streamed bodies
  max_body_size = 64 * 1024 * 1024, -- bytes of a buffered body
  max_redirects = 10,
}

-- JSON: lua-cjson for speed, made exact for numbers as Python's json is.
-- cjson 2.1.0 prints numbers with 14 significant digits and reads every
-- number as a float: 123456789012345 would go out as 1.2345678901234e+14,
-- 0.1 + 0.2 as 0.3, 2.0 as 2, and {"n": 3} come back as 3.0. So integers
-- of 15 digits and more, and floats cjson would not print as Python does, travel as
-- placeholders cjson prints as strings, put back after as their digits
-- (for floats the shortest that reads back the same, as Python's repr);
-- and read numbers that are whole become integers, but for a document with
-- one past 2^53 (a float cannot hold it), which Debian's dkjson reads
-- (exact, pure Lua, slower). JSON null stays cjson.null either way.
local cjson
local MARK = "\0\1" -- cjson writes it "\u0000\u0001": no JSON text has it raw

-- The exact text of a number cjson would not print as Python's json does,
-- or nil: integers of 15 digits and more; floats that 14 digits do not
-- give back, or that print without a point (2.0 as "2", -0.0 as "-0") or
-- as an exponent where Python does not.
local function exact(v)
  local mt = math.type(v)
  if mt == "integer" then
    return (v >= 1e14 or v <= -1e14) and tostring(v) or nil
  end
  if mt ~= "float" or v ~= v or v == math.huge or v == -math.huge then return nil end
  local g = ("%.14g"):format(v)
  if g:find(".", 1, true) and not g:find("e", 1, true) and tonumber(g) == v then return nil end
  return Headers.float_repr(v)
end

-- JSON arrays that Lua cannot tell from objects: a table with array_mt is
-- an array even when empty (res:json() gives `[]` so), empty_array is one.
M.array_mt = { __name = "tide.http.array" }
M.empty_array = setmetatable({}, { __name = "tide.http.empty_array",
  __newindex = function() error("tide.http.empty_array is read-only", 2) end })

-- The JSON text of v where cjson would not write it right (an inexact
-- number, an empty array), or nil.
local function raw_json(v)
  if type(v) ~= "table" then return exact(v) end
  if v == M.empty_array or (getmetatable(v) == M.array_mt and next(v) == nil) then return "[]" end
end

-- Whether v holds what raw_json writes; a string that is not UTF-8 is an
-- error (cjson would send its bytes as they are: no JSON text).
local function has_big(v, seen)
  local t = type(v)
  if t == "string" then
    local n, bad = utf8.len(v)
    if not n then
      error(("a string that is not UTF-8 (byte %d of %d is not)"):format(bad, #v), 0)
    end
    return false
  end
  if raw_json(v) then return true end
  if t ~= "table" or seen[v] then return false end
  seen[v] = true
  local big = false
  for k, x in next, v do
    big = has_big(k, seen) or big
    big = has_big(x, seen) or big
  end
  return big
end

-- A copy of v with its inexact numbers as marked strings (cycles kept, for
-- cjson to refuse).
local function marked(v, copies)
  local e = raw_json(v)
  if e then return MARK .. e end
  if type(v) ~= "table" then return v end
  if copies[v] then return copies[v] end
  local t = {}
  copies[v] = t
  for k, x in next, v do
    t[exact(k) or marked(k, copies)] = marked(x, copies) -- a key is a string: its digits
  end
  return setmetatable(t, getmetatable(v))
end

local function json_encode(v)
  cjson = cjson or require "cjson"
  if not has_big(v, {}) then return cjson.encode(v) end
  return (cjson.encode(marked(v, {})):gsub('"\\u0000\\u0001([-+.%deE%[%]]+)"', "%1"))
end

-- Whole floats of t become integers; false if one is past 2^53.
local function integers(t)
  for k, v in next, t do
    if math.type(v) == "float" and v == math.floor(v) then
      if v >= 2^53 or v <= -2^53 then
        if v ~= math.huge and v ~= -math.huge then return false end
      else
        t[k] = math.tointeger(v)
      end
    elseif type(v) == "table" and not integers(v) then
      return false
    end
  end
  return true
end

local function json_decode(s)
  cjson = cjson or require "cjson"
  local v = cjson.decode(s)
  if math.type(v) == "float" then v = math.tointeger(v) or v end
  if type(v) ~= "table" or (integers(v) and not s:find("%[%s*%]")) then return v end
  -- a big integer, or an empty array (cjson would make it {}): dkjson's arrays
  -- get array_mt
  local w = require("dkjson").decode(s, 1, cjson.null, nil, M.array_mt)
  if type(w) == "table" then integers(w) end
  return w
end

M.urlencode, M.urldecode = Headers.urlencode, Headers.urldecode

---------------------------------------------------------------------------
-- Argument checks: errors name the function, the argument and the option.

-- Raises msg at the first caller outside tide's own modules.
local need_task = require("tide.core").need_task

-- Raises as luaL_argerror would, at the first caller outside tide's modules.
local argerror = require("tide.core").argerror
-- A URL for an error's message or url field: its password, if any, as ***
local red = core.redact_url

local OPTION_TYPES = {
  headers = "table", query = "table|string", body = "string|function|table",
  json = "any", form = "table", timeout = "number|false",
  connect_timeout = "number", idle_timeout = "number", max_redirects = "number",
  verify = "boolean", cafile = "string", proxy = "string",
  max_body_size = "number|false", http_version = "string", stream = "boolean",
  trust_env = "boolean",
}

-- Numbers that must be positive (> 0) or at least 0.
local POSITIVE = { timeout = true, connect_timeout = true, idle_timeout = true }
local NONNEGATIVE = { max_body_size = true, max_redirects = true, max_connections = true,
  max_per_host = true }

-- Checks an options table against types ({name = "number|false", ...}).
local function check_table(fname, argn, opts, types)
  if type(opts) ~= "table" then
    argerror(fname, argn, "table of options expected, got " .. type(opts))
  end
  for k, v in pairs(opts) do
    local want = types[k]
    if not want then
      argerror(fname, argn, ("unknown option '%s'"):format(tostring(k)))
    end
    local bar = "|" .. want .. "|"
    if want ~= "any" and not bar:find("|" .. type(v) .. "|", 1, true)
        and not (v == false and bar:find("|false|", 1, true)) then
      argerror(fname, argn, ("opts.%s: %s expected, got %s"):format(k, want:gsub("|", " or "),
        v == true and "true" or type(v)))
    end
    if type(v) == "number" and ((POSITIVE[k] and not (v > 0)) or (NONNEGATIVE[k] and not (v >= 0))) then
      argerror(fname, argn, ("opts.%s: %s number expected, got %s"):format(k,
        POSITIVE[k] and "a positive" or "a non-negative", tostring(v)))
    end
    if NONNEGATIVE[k] and type(v) == "number" and v ~= math.huge and not math.tointeger(v) then
      argerror(fname, argn, ("opts.%s: an integer or math.huge expected, got %s"):format(k, tostring(v)))
    end
  end
  return opts
end

local function check_opts(fname, argn, opts)
  if opts == nil then return {} end
  return check_table(fname, argn, opts, OPTION_TYPES)
end

local VERSIONS = { ["1.0"] = true, ["1.1"] = true, ["2"] = true, ["2-prior-knowledge"] = true }

local function header_lines(fname, argn, list, seen, ...)
  for _, hs in ipairs({ ... }) do
    for name, value in pairs(hs) do
      if type(name) ~= "string" or name == "" or name:find("[%c :]") then
        argerror(fname, argn, ("opts.headers: bad header name %q"):format(tostring(name)))
      end
      local lname = name:lower()
      if not seen[lname] then
        seen[lname] = true
        local values = type(value) == "table" and value or { value }
        if not Headers.is_array(values) then
          argerror(fname, argn, ("opts.headers: value of '%s' is a table that is not an array")
            :format(name))
        end
        for _, v in ipairs(values) do
          if type(v) ~= "string" and type(v) ~= "number" then
            argerror(fname, argn, ("opts.headers: value of '%s' must be a string, got %s"):format(name, type(v)))
          end
          v = tostring(v)
          if v:find("[\r\n]") then
            argerror(fname, argn, ("opts.headers: value of '%s' contains a line break"):format(name))
          elseif v:find("\0", 1, true) then -- curl would cut the value there
            argerror(fname, argn, ("opts.headers: value of '%s' contains a zero byte"):format(name))
          end
          list[#list + 1] = v == "" and name .. ";" or name .. ": " .. v
        end
      end
    end
  end
  return list
end

-- A count option as the engine takes it: math.huge is "no limit", which is
-- none (nil) for max_body_size and the largest integer elsewhere.
local HUGE = math.huge
local function count(v)
  if v == HUGE then return math.maxinteger end
  return math.tointeger(v) or v
end

-- Checks a query or form table.
local function check_params(fname, argn, what, t)
  local problem = Headers.params_problem(t)
  if problem then argerror(fname, argn, ("opts.%s: %s"):format(what, problem)) end
end

local function seconds(v, default)
  if v == nil then v = default end
  if v == false or v == nil then return 0 end
  local ms = -(-v * 1000 // 1) -- the ceiling (a float: the engine takes whole floats)
  return ms < 1 and 1 or ms
end

-- A body given as an array of strings, as a function (called until it
-- returns nil).
local function body_source(body)
  local i = 0
  return function() i = i + 1; return body[i] end
end

-- A body function whose pieces are checked: one that is not a string is a
-- bad argument of the call (fname's argument argn, its opts).
local function checked_body(fn, fname, argn)
  return function()
    local chunk = fn()
    if chunk ~= nil and type(chunk) ~= "string" then
      argerror(fname, argn, ("opts.body: the body function gave a %s (strings expected)")
        :format(type(chunk)))
    end
    return chunk
  end
end

---------------------------------------------------------------------------
-- Responses

local Response = {}
Response.__name = "tide.http.Response"

-- self of a method called with "." instead of ":" (or on something else)
local check_self = require("tide.core").check_self

-- A byte count: nil, or a non-negative integer (whole floats too).
local function byte_count(fname, n)
  if n == nil then return nil end
  local i = math.tointeger(n)
  if not i or i < 0 then
    argerror(fname, 1, "non-negative byte count expected, got " ..
      (type(n) == "number" and tostring(n) or type(n)))
  end
  return i
end

-- res.timings is unpacked from the engine's doubles and named on first use
local TIMINGS = { "dns", "connect", "tls", "pretransfer", "first_byte", "total", "redirect" }
local TIMES = "ddddddd" -- how the engine packs them
function Response.__index(self, k)
  if k == "timings" then
    local t, a = {}, { string.unpack(TIMES, rawget(self, "_timings")) }
    for i, name in ipairs(TIMINGS) do t[name] = a[i] end
    rawset(self, "timings", t)
    return t
  end
  return Response[k]
end

function Response:json()
  check_self(self, Response, "json")
  local body = self.body
  if body == nil then body = self:read_all() end
  local ok, v = pcall(json_decode, body)
  if not ok then
    v = tostring(v):gsub("^[^:]*:%d+: ", "") -- the decoder's reason, not where it is
    error(tide.error("json", ("%s: the body is not JSON (%s)"):format(red(self.url), v), { url = self.url }), 2)
  end
  return v
end

function Response:raise_for_status()
  check_self(self, Response, "raise_for_status")
  if self.status >= 400 then
    error(tide.error("http", ("%d %s for %s"):format(self.status, self.reason or "", red(self.url)),
      { status = self.status, url = self.url, response = self }), 2)
  end
  return self
end

function Response:ok()
  check_self(self, Response, "ok")
  return self.status < 400
end

-- read([n]) -> up to n bytes, or nil at the end. Of a streamed body
-- (opts.stream = true) the transfer pauses while the reader is behind; a
-- buffered one is read from res.body, which stays.
function Response:read(n)
  check_self(self, Response, "read")
  n = byte_count("read", n)
  local x = rawget(self, "_x")
  if not x then
    local b, pos = self.body or "", rawget(self, "_pos") or 0
    if pos >= #b then return nil end
    local last = n and math.min(#b, pos + n) or #b
    rawset(self, "_pos", last)
    return b:sub(pos + 1, last)
  end
  return x:read(n)
end

-- for chunk in res:chunks([size]) do ... end
function Response:chunks(size)
  check_self(self, Response, "chunks")
  size = byte_count("chunks", size)
  if size == 0 then -- read(0) gives "" until the end: the loop would never end
    argerror("chunks", 1, "positive byte count expected, got 0")
  end
  return function() return self:read(size) end
end

function Response:read_all()
  check_self(self, Response, "read_all")
  local parts = {}
  for chunk in self:chunks() do parts[#parts + 1] = chunk end
  return table.concat(parts)
end

-- Ends a streamed transfer early (also what <close> and the collector do).
function Response:close()
  check_self(self, Response, "close")
  local x = rawget(self, "_x")
  if x then x:close() end
end
Response.__close = Response.close

function Response:__tostring()
  return ("<Response %d %s>"):format(self.status, self.url)
end

---------------------------------------------------------------------------
-- Requests

local function join(base, url)
  if base == nil or url:find("^%a[%w+.-]*://") then return url end
  return (base:gsub("/+$", "")) .. "/" .. (url:gsub("^/+", ""))
end

local EMPTY = setmetatable({}, { __newindex = function() error("read-only", 2) end })

-- tide follows redirects itself, not curl (which sends a Location's spaces
-- in the query as "+", keeps a POST's Content-Type on the GET a 303 makes of
-- it, and any other method on a 303): 303 makes a GET without the body (and
-- so do 301 and 302 of a POST, as RFC 9110 allows and browsers, aiohttp and
-- requests do), 307 and 308 keep the method and the body.
local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }
local GET_DROPS = { ["content-type"] = true, ["content-length"] = true }
local CREDENTIALS = { authorization = true, cookie = true } -- not to another origin

local function origin(u)
  return (u:match("^%a[%w+.-]*://[^/?#]*") or ""):lower()
end

-- The header lines whose names are not in names.
local function without(lines, names)
  local out = {}
  for _, line in ipairs(lines) do
    if not names[line:match("^[^:;]*"):lower()] then out[#out + 1] = line end
  end
  return out
end

-- The session's first cookies (http.session{cookies = {...}}) as cookie-file
-- lines for url's host, the first time a request of the session goes there:
-- in the jar, a cookie the server sets of the same name replaces them, as
-- in aiohttp's jar (sent beside the jar's, the old value stayed).
local function seed_lines(sess, url)
  local host = url:match("^%a[%w+.-]*://([^/?#]*)") or ""
  host = host:gsub("^.*@", ""):gsub(":%d*$", ""):gsub("^%[(.*)%]$", "%1"):lower()
  if sess.seeded[host] then return nil end
  sess.seeded[host] = true
  local lines = {}
  for i, c in ipairs(sess.seed) do -- a __Secure- or __Host- name only as Secure (curl's rule)
    local name = c[1]:lower()
    local secure = (name:find("^__secure%-") or name:find("^__host%-")) and "TRUE" or "FALSE"
    lines[i] = ("%s\tFALSE\t/\t%s\t0\t%s\t%s"):format(host, secure, c[1], c[2])
  end
  return lines
end

-- One request and response with the spec sp as filled: starts the
-- transfer, feeds a body function, returns the transfer and the engine's
-- response.
local function exchange(sess, cs, sp, body_fn)
  if sess.seed then sp.seed_cookies = seed_lines(sess, sp.url) end
  local x, ev = cs:request(sp)
  if body_fn then
    local ok, e = pcall(function()
      while ev == "body" do
        local chunk = body_fn()
        if chunk == "" then
          tide.sleep(0) -- "nothing yet": let the loop (and timeouts) run
        else
          local _
          _, ev = x:feed(chunk)
        end
      end
    end)
    if not ok then x:close(); error(e, 0) end
  end
  return x, x:response()
end

-- The engine's response r (of transfer x) as a Response.
local function finish(r, x, stream)
  r._redirect_url, r._redirect_error = nil, nil
  r.headers = Headers.wrap(r.headers, r.header_block, core.header_map)
  r.header_block = nil
  if stream then r._x = x end
  return setmetatable(r, Response)
end

local function full_url(sess, url)
  if sess.base_url then url = join(sess.base_url, url) end
  return url
end

-- The timeout of a request over its redirects (curl's message would give
-- the last hop's time only).
local function hops_timeout(method, url, timeout, n)
  return tide.error("timeout", ("%s %s: timed out after %d milliseconds (timeout, over %d "
    .. "redirect(s))"):format(method, red(url), math.floor(timeout * 1000), n), { url = red(url), curl_code = 28 })
end

-- Follows the redirects of r, the response (x its transfer) to the request
-- of spec sp, a table of its own that each hop changes; first says what the
-- first request was (method, url, stream, its body as body_fn and
-- body_array) and its limits (max_redirects, timeout and its deadline).
local function follow(sess, cs, sp, x, r, first)
  local method, url, stream, body_fn = first.method, first.url, first.stream, first.body_fn
  local max_redirects, timeout, deadline = first.max_redirects, first.timeout, first.deadline
  local n, sum = 0, nil -- sum: the timings of the hops before, added up (as curl does)
  while REDIRECT[r.status] do
    if not r._redirect_url then
      local loc = r.headers.location
      if not (loc and loc:find("%S")) then break end -- nothing to follow: the 3xx it is
      if stream then x:close() end
      local scheme = loc:match("^%s*(%a[%w+.-]*):")
      error(tide.error("invalid_url", ("%s %s: the %d redirect's Location %q is not %s"):format(
        sp.method, red(sp.url), r.status, red(loc), scheme and not scheme:find("^[Hh][Tt][Tt][Pp][Ss]?$")
        and "an http or https URL" or ("a URL (%s)"):format(r._redirect_error)),
        { url = red(sp.url) }), 0)
    end
    if stream then x:close() end
    if n == max_redirects then
      error(tide.error("too_many_redirects", ("%s %s: Number of redirects hit maximum amount "
        .. "(Maximum (%d) redirects followed)"):format(method, red(url), max_redirects),
        { url = red(url), curl_code = 47 }), 0)
    end
    n = n + 1
    local to, hs = r._redirect_url, sp.headers
    if not to:find("^[Hh][Tt][Tt][Pp][Ss]?://") then
      error(tide.error("invalid_url", ("%s %s: the %d redirect goes to %s, not an http or "
        .. "https URL"):format(sp.method, red(sp.url), r.status, red(to)), { url = red(to) }), 0)
    end
    if sp.method ~= "HEAD" and (r.status == 303 or (sp.method == "POST"
        and (r.status == 301 or r.status == 302))) then
      -- See Other (and POST on 301/302, as curl and browsers): GET it, without the body
      sp.method, sp.body, sp.body_fn, body_fn = "GET", nil, false, nil
      sp.body_size = nil
      hs = without(hs, GET_DROPS)
    elseif first.body_array then
      body_fn = body_source(first.body_array)
    elseif body_fn then
      error(tide.error("http_transfer", ("%s %s: the %d redirect needs the body sent again, "
        .. "which a body function cannot do (give the body as a string or an array)"):format(
          sp.method, red(sp.url), r.status), { url = red(sp.url) }), 0)
    end
    if origin(to) ~= origin(sp.url) then
      hs = without(hs, CREDENTIALS)
      sp.cookie = nil -- the caller's own Cookie stays with its origin
    end
    sp.url, sp.headers = to, hs
    if deadline then
      local left = deadline - tide.time()
      if left <= 0 then error(hops_timeout(sp.method, to, timeout, n), 0) end
      sp.timeout = seconds(left)
    end
    local t = { string.unpack(TIMES, r._timings) }
    if sum then for i = 1, 6 do sum[i] = sum[i] + t[i] end else sum = t end
    local ok
    ok, x, r = pcall(exchange, sess, cs, sp, body_fn)
    if not ok then
      if deadline and tide.iserror(x) and x.kind == "timeout" then
        x = hops_timeout(sp.method, to, timeout, n)
      end
      error(x, 0)
    end
  end
  r.redirects = n
  if sum then -- and redirect: the time until the last hop started
    local t = { string.unpack(TIMES, r._timings) }
    for i = 1, 6 do t[i] = t[i] + sum[i] end
    r._timings = string.pack(TIMES, t[1], t[2], t[3], t[4], t[5], t[6], sum[6])
  end
  return finish(r, x, stream)
end

-- One request, its redirects followed: with a spec sp of its own when it
-- has options (or is the first without of its session and method), or
-- with the session's spec for requests without options.
local function send(sess, cs, sp, x, r, first)
  if REDIRECT[r.status] and first.max_redirects > 0 then
    if first.shared then -- the next request without options overwrites it
      local own = {}
      for k, v in pairs(sp) do own[k] = v end
      sp, own.url = own, first.url
    end
    return follow(sess, cs, sp, x, r, first)
  end
  return finish(r, x, first.stream)
end

local function perform(sess, fname, argbase, method, url, opts)
  if type(url) ~= "string" then
    argerror(fname, argbase, "URL string expected, got " .. type(url))
  end
  local cs = sess.core
  if opts == nil then
    -- A request without options (most are) takes the spec its session made
    -- for the method the first time (see the end of the spec below).
    local plain = sess.plain[method]
    if plain then
      need_task(fname)
      local encoded = core.encode_url(full_url(sess, url))
      if encoded then -- (without a scheme, the way below says what is wrong)
        local sp, timeout = plain.spec, plain.timeout
        sp.url = encoded
        if cs == "default" then cs = core.default_session() end
        local deadline = timeout and timeout > 0 and tide.time() + timeout
        local x, r = exchange(sess, cs, sp)
        if not REDIRECT[r.status] then return finish(r, x, false) end
        return send(sess, cs, sp, x, r, { method = method, url = encoded, shared = true,
          max_redirects = plain.max_redirects, timeout = timeout, deadline = deadline })
      end
    end
    opts = EMPTY
  else
    check_opts(fname, argbase + 1, opts)
  end
  need_task(fname)
  local d = sess.defaults
  url = full_url(sess, url)
  local given = (opts.body ~= nil and 1 or 0) + (opts.json ~= nil and 1 or 0) + (opts.form ~= nil and 1 or 0)
  if given > 1 then
    argerror(fname, argbase + 1, "opts.body, opts.json and opts.form: give one of them")
  end
  local q = opts.query
  if q then
    if type(q) == "table" then check_params(fname, argbase + 1, "query", q) end
    -- a string is sent as given, but a "#" in it is data, not a fragment (yarl)
    q = type(q) == "table" and M.urlencode(q) or q:gsub("#", "%%23")
    if q ~= "" then -- before a #fragment
      local base, frag = url:match("^([^#]*)(.*)$")
      local sep = base:find("?", 1, true) and (base:find("[?&]$") and "" or "&") or "?"
      url = base .. sep .. q .. frag
    end
  end
  local encoded, why = core.encode_url(url) -- an IDN host, spaces, bytes past ASCII
  if not encoded then -- (no scheme: no guessing, as curl would)
    local shown = url:gsub("[%z\1-\31\127]", function(c) return ("\\%d"):format(c:byte()) end)
    error(tide.error("invalid_url", ("%s: %s"):format(red(shown), why), { url = red(url) }), 0)
  end
  url = encoded
  local body, body_fn, ctype = opts.body, nil, nil
  if opts.json ~= nil then
    local ok, v = pcall(json_encode, opts.json)
    if not ok then argerror(fname, argbase + 1, "opts.json: " .. tostring(v):gsub("^[^:]*:%d+: ", "")) end
    body, ctype = v, "application/json"
  elseif opts.form then
    check_params(fname, argbase + 1, "form", opts.form)
    body, ctype = M.urlencode(opts.form), "application/x-www-form-urlencoded"
  end
  if type(body) == "table" then -- a callable table is a function
    local mt = getmetatable(body)
    if type(mt) == "table" and mt.__call then
      local callable = body
      body = function() return callable() end
    end
  end
  local body_array = body ~= nil and type(body) == "table" and body or nil -- a redirect may send it again
  if body_array then
    if not Headers.is_array(body) then
      argerror(fname, argbase + 1, "opts.body: a table that is not an array of strings")
    end
    for i, v in ipairs(body) do
      if type(v) ~= "string" then
        argerror(fname, argbase + 1, ("opts.body[%d]: string expected, got %s"):format(i, type(v)))
      end
    end
  end
  if type(body) == "function" then
    body_fn, body = checked_body(body, fname, argbase + 1), nil
  elseif body ~= nil and type(body) ~= "string" then
    body_fn, body = body_source(body), nil
  end
  local headers = EMPTY -- a table of its own only when there are header lines
  if opts.headers or d.headers or ctype then
    headers = {}
    header_lines(fname, argbase + 1, headers, {}, opts.headers or EMPTY, d.headers or EMPTY,
      ctype and { ["Content-Type"] = ctype } or EMPTY)
  end
  -- A Cookie header of the caller's joins the session's cookies in one
  -- line (RFC 6265 5.4), through curl's CURLOPT_COOKIE; it does not go to
  -- another origin (see follow).
  local own_cookie
  local body_size
  for i = #headers, 1, -1 do
    local name, value = headers[i]:match("^([^:;]*)[:;]%s*(.*)$")
    name = name:lower()
    if name == "cookie" then
      own_cookie = own_cookie and value .. "; " .. own_cookie or value
      table.remove(headers, i)
    elseif name == "content-length" and body_fn then -- sent as it is, not chunked
      body_size = math.tointeger(tonumber(value))
    end
  end
  local stream = opts.stream or false
  local version = opts.http_version or d.http_version
  if version and not VERSIONS[version] then
    argerror(fname, argbase + 1, ("opts.http_version: one of 1.0, 1.1, 2, 2-prior-knowledge expected, got %q"):format(version))
  end
  local max_body = opts.max_body_size
  if max_body == nil then max_body = d.max_body_size end
  if max_body == nil then max_body = not stream and DEFAULTS.max_body_size end
  local timeout = opts.timeout
  if timeout == nil then timeout = d.timeout end
  if timeout == nil and not stream then timeout = DEFAULTS.timeout end
  local verify = opts.verify
  if verify == nil then verify = d.verify end
  local trust_env = opts.trust_env
  if trust_env == nil then trust_env = d.trust_env or false end
  local redirects = opts.max_redirects or d.max_redirects
  local max_redirects = redirects and count(redirects) or DEFAULTS.max_redirects
  if max_body == HUGE then max_body = nil end
  local sp = {
    method = method, url = url, headers = headers, body = body, body_fn = body_fn ~= nil,
    timeout = seconds(timeout),
    connect_timeout = seconds(opts.connect_timeout or d.connect_timeout, DEFAULTS.connect_timeout),
    idle_timeout = stream and seconds(opts.idle_timeout or d.idle_timeout, DEFAULTS.idle_timeout) or 0,
    max_redirects = 0, -- tide follows them (see REDIRECT)
    verify = verify, cafile = opts.cafile or d.cafile, proxy = opts.proxy or d.proxy,
    max_body = max_body or -1, http_version = version, stream = stream,
    cookie = own_cookie, body_size = body_size, trust_env = trust_env,
  }
  if opts == EMPTY and not body_fn then -- the spec of every request like this one
    local plain = {}
    for k, v in pairs(sp) do plain[k] = v end
    sess.plain[method] = { spec = plain, max_redirects = max_redirects, timeout = timeout }
  end
  if cs == "default" then cs = core.default_session() end
  local deadline = timeout and timeout > 0 and tide.time() + timeout -- over every hop
  local x, r = exchange(sess, cs, sp, body_fn)
  return send(sess, cs, sp, x, r, { method = method, url = url, stream = stream,
    body_fn = body_fn, body_array = body_array,
    max_redirects = max_redirects, timeout = timeout, deadline = deadline })
end

---------------------------------------------------------------------------
-- Sessions

local Session = {}
Session.__index = Session
Session.__name = "tide.http.Session"

local METHODS = { "get", "post", "put", "patch", "delete", "head", "options" }

local function check_method(method)
  if type(method) ~= "string" or method == "" or method:find("[^%w%-_]") then
    argerror("request", 1, ("HTTP method expected, got %s"):format(
      type(method) == "string" and ("%q"):format(method) or type(method)))
  end
  return method:upper()
end

function Session:request(method, url, opts)
  check_self(self, Session, "request")
  return perform(self, "request", 2, check_method(method), url, opts)
end

for _, name in ipairs(METHODS) do
  local method = name:upper()
  Session[name] = function(self, url, opts)
    check_self(self, Session, name)
    return perform(self, name, 1, method, url, opts)
  end
end

function Session:close()
  check_self(self, Session, "close")
  if self.core ~= "default" then self.core:close() end
end
Session.__close = Session.close

local SESSION_OPTIONS = {
  base_url = "string", headers = "table", timeout = "number|false",
  connect_timeout = "number", max_connections = "number", max_per_host = "number",
  cookies = "boolean|table", verify = "boolean", cafile = "string", proxy = "string",
  max_body_size = "number|false", http_version = "string", max_redirects = "number",
  idle_timeout = "number", trust_env = "boolean",
}

-- http.session{base_url =, headers =, timeout =, max_connections =,
--   max_per_host =, cookies = true | false | {name = value}, ...} -> session
-- with the module's request functions as methods; it keeps connections
-- alive between requests and (by default) a cookie jar.
function M.session(opts)
  check_table("session", 1, opts or {}, SESSION_OPTIONS)
  opts = opts or {}
  local defaults = {}
  for k in pairs(OPTION_TYPES) do defaults[k] = opts[k] end
  if opts.headers then -- checked, and kept as given now (aiohttp copies them too)
    header_lines("session", 1, {}, {}, opts.headers)
    local copy = {}
    for name, v in pairs(opts.headers) do
      copy[name] = type(v) == "table" and table.move(v, 1, #v, 1, {}) or v
    end
    defaults.headers = copy
  end
  if opts.http_version and not VERSIONS[opts.http_version] then
    argerror("session", 1, ("opts.http_version: one of 1.0, 1.1, 2, 2-prior-knowledge expected, got %q")
      :format(opts.http_version))
  end
  local seed -- {{name, value}, ...}: the jar's first cookies, for every host
  if type(opts.cookies) == "table" then
    seed = {}
    for k, v in pairs(opts.cookies) do
      if type(k) ~= "string" or type(v) ~= "string" and type(v) ~= "number" then
        argerror("session", 1, ("opts.cookies: names and values must be strings (or numbers), "
          .. "got %s = %s"):format(type(k), type(v)))
      end
      v = tostring(v)
      if k == "" or k:find("[%c%s=;,]") or v:find("[%c;]") then
        argerror("session", 1, ("opts.cookies: %q = %q is not a cookie (a name without "
          .. "spaces, '=', ';' or ',', a value without ';' or control characters)"):format(k, v))
      end
      seed[#seed + 1] = { k, v }
    end
    table.sort(seed, function(a, b) return a[1] < b[1] end)
    if #seed == 0 then seed = nil end
  end
  return setmetatable({
    core = core.session({
      max_connections = opts.max_connections, max_per_host = opts.max_per_host,
      cookies = opts.cookies ~= false,
    }),
    base_url = opts.base_url, defaults = defaults, seed = seed, seeded = {}, plain = {},
  }, Session)
end

-- Module-level calls share one session per run (no cookie jar).
local default = setmetatable({ core = "default", defaults = {}, plain = {} }, Session)

function M.request(method, url, opts)
  return perform(default, "request", 2, check_method(method), url, opts)
end

for _, name in ipairs(METHODS) do
  local method = name:upper()
  M[name] = function(url, opts) return perform(default, name, 1, method, url, opts) end
end

-- http.serve(host, port, handler, opts): the small HTTP/1.1 server.
function M.serve(...)
  return require("tide.http_server").serve(...)
end

M.Response = Response
M.curl_version = core.curl_version

return M
