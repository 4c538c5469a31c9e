-- tide.http_headers: HTTP header maps (and URL encoding), shared by the
-- client's responses and the server's requests. A map answers h[name] with
-- the first value of that name in any letter case; h:get_all(name) gives
-- every value in order and h:list() every (name, value) pair as received.
-- pairs(h) walks lower-case names to first values. The map is an empty
-- proxy (values in a side table), so a header named "list" or "get_all"
-- cannot hide the methods: h.list is the method, h["List"] the header.
local M = {}
local core = require "tide.core"
local argerror = core.argerror

-- Whether t is an array: its keys are exactly 1..#t (no hole either).
function M.is_array(t)
  local n, count = #t, 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false end
    count = count + 1
  end
  return count == n
end

-- What is wrong with a query or form table (names to strings, numbers or
-- booleans, or arrays of them: a repeated name), or nil.
function M.params_problem(t)
  for k, v in pairs(t) do
    local vs = type(v) == "table" and v or { v }
    if type(k) ~= "string" and type(k) ~= "number" then
      return ("names must be strings, got %s"):format(type(k))
    end
    if type(v) == "table" and not M.is_array(v) then
      return ("value of '%s' is a table that is not an array"):format(k)
    end
    for _, one in pairs(vs) do
      local ty = type(one)
      if ty ~= "string" and ty ~= "number" and ty ~= "boolean" then
        return ("value of '%s' must be a string, number or boolean, got %s"):format(k, ty)
      end
      if one ~= one or one == math.huge or one == -math.huge then -- as yarl
        return ("value of '%s' must be a finite number, got %s"):format(k,
          one ~= one and "nan" or tostring(one))
      end
    end
  end
end

-- Python's repr of a finite float: the fewest digits that read back the
-- same, fixed notation from 1e-4 up to below 1e16 ("0.1", "2.0",
-- "0.30000000000000004"), else scientific ("1e+16", "1.5e-05"). What
-- aiohttp sends for a float in a query or form and Python's json writes;
-- Lua's tostring keeps 14 digits.
function M.float_repr(v)
  if v == 0 then return 1 / v < 0 and "-0.0" or "0.0" end
  local s
  for d = 0, 16 do
    s = ("%." .. d .. "e"):format(v)
    if tonumber(s) == v then break end
  end
  local sign, int, frac, exp = s:match("^(-?)(%d)%.?(%d*)e([-+]%d+)$")
  local digits, e = (int .. frac):gsub("0+$", ""), tonumber(exp)
  if digits == "" then digits = "0" end
  local n, point = #digits, e + 1 -- digits before the decimal point
  if e < -4 or e >= 16 then
    return ("%s%s%s%se%s%02d"):format(sign, digits:sub(1, 1), n > 1 and "." or "",
      digits:sub(2), e < 0 and "-" or "+", math.abs(e))
  elseif point <= 0 then
    return sign .. "0." .. ("0"):rep(-point) .. digits
  elseif point >= n then
    return sign .. digits .. ("0"):rep(point - n) .. ".0"
  end
  return sign .. digits:sub(1, point) .. "." .. digits:sub(point + 1)
end

-- URL encoding, for the client's query strings and forms and the server's
-- queries.
local function escape(s)
  if math.type(s) == "float" then s = M.float_repr(s) end
  return (tostring(s):gsub("[^%w%-%._~]", function(c)
    return ("%%%02X"):format(c:byte())
  end))
end

-- urlencode({a = 1, b = {"x", "y"}}) -> "a=1&b=x&b=y" (keys sorted)
function M.urlencode(t)
  if type(t) ~= "table" then argerror("urlencode", 1, "table expected, got " .. type(t)) end
  local problem = M.params_problem(t)
  if problem then argerror("urlencode", 1, problem) end
  local keys, raw, names, out = {}, {}, {}, {}
  for k in pairs(t) do -- sorted by name (a number's as it is sent)
    keys[#keys + 1] = k
    raw[k] = math.type(k) == "float" and M.float_repr(k) or tostring(k)
    names[k] = escape(raw[k])
  end
  table.sort(keys, function(a, b) return raw[a] < raw[b] end)
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) == "table" then
      for _, item in ipairs(v) do out[#out + 1] = names[k] .. "=" .. escape(item) end
    else
      out[#out + 1] = names[k] .. "=" .. escape(v)
    end
  end
  return table.concat(out, "&")
end

function M.urldecode(s)
  if type(s) ~= "string" then argerror("urldecode", 1, "string expected, got " .. type(s)) end
  return (s:gsub("%+", " "):gsub("%%(%x%x)", function(h)
    return string.char(tonumber(h, 16))
  end))
end

-- A map keeps, under keys no string can equal: its list ({name, value, ...},
-- or the header lines as received, a client response's, split into that
-- list on first use) and its values ({lower name = first value}, or made
-- on first lookup by its builder from the header lines).
local LIST, VALUES, BUILD = {}, {}, {}

local function list_of(h)
  local l = rawget(h, LIST)
  if type(l) == "string" then
    local t = {}
    for line in l:gmatch("[^\r\n]+") do
      local name, value = line:match("^([^:]+):[ \t]*(.*)$")
      if name then t[#t + 1], t[#t + 2] = name, value end
    end
    l = t
    rawset(h, LIST, t)
  end
  return l
end

-- {lower name = first value} of a flat list {name1, value1, ...}
local function map_of(list)
  local v = {}
  for i = #list - 1, 1, -2 do -- backwards, so the first value wins
    v[list[i]:lower()] = list[i + 1]
  end
  return v
end

local function values_of(h)
  local v = rawget(h, VALUES)
  if not v then
    local l = rawget(h, LIST)
    v = type(l) == "string" and rawget(h, BUILD)(l) or map_of(l)
    rawset(h, VALUES, v)
  end
  return v
end

local methods = {}

local function check_map(h, fname) core.check_self(h, M.mt, fname) end

function methods.get_all(h, name)
  check_map(h, "get_all")
  if type(name) ~= "string" then argerror("get_all", 2, "string expected, got " .. type(name)) end
  local out, l, want = {}, list_of(h), name:lower()
  for i = 1, #l, 2 do
    if l[i]:lower() == want then out[#out + 1] = l[i + 1] end
  end
  return out
end

function methods.list(h)
  check_map(h, "list")
  local out, l = {}, list_of(h)
  for i = 1, #l, 2 do out[#out + 1] = { l[i], l[i + 1] } end
  return out
end

local mt = {
  __index = function(h, k)
    local m = methods[k]
    if m then return m end
    if type(k) == "string" then return values_of(h)[k:lower()] end
  end,
  __newindex = function() error("headers are read-only", 2) end,
  __pairs = function(h) return next, values_of(h), nil end,
  __name = "tide.Headers",
}

M.mt = mt

-- A map of v ({lower-case name = first value}) and its list (or its header
-- lines, "Name: value\r\n"...); with v nil, build(lines) makes v when first
-- needed.
function M.wrap(v, list, build)
  return setmetatable({ [LIST] = list, [VALUES] = v, [BUILD] = build }, mt)
end

-- Builds a map from a flat list {name1, value1, name2, value2, ...}.
function M.new(list)
  return M.wrap(map_of(list), list)
end

function M.is(v) return getmetatable(v) == mt end

return M
