-- check.lua: runs tide examples and compares their output with the
-- expected patterns in expected/<name>.txt.
--
--   lua5.4 scripts/examples/check.lua <tide-binary> <example-name> [<name> ...]
--
-- Each line of expected/<name>.txt is a Lua pattern matched against the
-- whole corresponding output line (a missing ^ or $ anchor is added). The
-- example's stdout and stderr are both captured, so an error message counts
-- as unexpected output. Exits 0 when every example matches, 1 otherwise
-- (and 2 on bad usage).

local TIMEOUT = 60 -- seconds per example, when `timeout` exists

local function usage()
  io.stderr:write("usage: lua5.4 check.lua <tide-binary> <example-name> [<example-name> ...]\n")
  os.exit(2)
end

local tide_bin = arg[1]
if not tide_bin or not arg[2] then
  usage()
end

-- Directory holding this script (and the examples).
local here = (arg[0] or ""):match("^(.*)/[^/]*$") or "."

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function read_lines(path)
  local f, err = io.open(path, "r")
  if not f then
    return nil, err
  end
  local lines = {}
  for line in f:lines() do
    lines[#lines + 1] = line
  end
  f:close()
  return lines
end

local function anchor(pat)
  if pat:sub(1, 1) ~= "^" then
    pat = "^" .. pat
  end
  -- a trailing "$" is an anchor unless escaped as "%$" (count the %s)
  local pct = #(pat:match("(%%*)%$$") or "")
  if pat:sub(-1) ~= "$" or pct % 2 == 1 then
    pat = pat .. "$"
  end
  return pat
end

local function run(name)
  local script = here .. "/" .. name .. ".lua"
  local cmd = shell_quote(tide_bin) .. " " .. shell_quote(script)
  -- Guard against hangs where coreutils' timeout is available.
  local full = "if command -v timeout >/dev/null 2>&1; then timeout " .. TIMEOUT .. " "
    .. cmd .. "; else " .. cmd .. "; fi 2>&1"
  local p = assert(io.popen(full, "r"))
  local out = {}
  for line in p:lines() do
    out[#out + 1] = line
  end
  local _, how, code = p:close()
  return out, how, code
end

local function check(name)
  local patterns, err = read_lines(here .. "/expected/" .. name .. ".txt")
  if not patterns then
    print(("FAIL %s: cannot read expected output: %s"):format(name, err))
    return false
  end
  local f = io.open(here .. "/" .. name .. ".lua", "r")
  if not f then
    print(("FAIL %s: no such example %s/%s.lua"):format(name, here, name))
    return false
  end
  f:close()

  local t0 = os.time()
  local out, how, code = run(name)
  local ok = true
  local report = {}

  local n = math.max(#patterns, #out)
  for i = 1, n do
    local pat, line = patterns[i], out[i]
    local good = false
    if pat and line then
      local success, res = pcall(string.find, line, anchor(pat))
      if not success then
        report[#report + 1] = ("! line %d: bad pattern %q: %s"):format(i, pat, res)
      end
      good = success and res ~= nil
    end
    if good then
      report[#report + 1] = "  " .. line
    else
      ok = false
      if pat then
        report[#report + 1] = ("- %s    (expected pattern, line %d)"):format(pat, i)
      end
      if line then
        report[#report + 1] = ("+ %s    (actual, line %d)"):format(line, i)
      end
    end
  end

  local status_ok = (how == "exit" and code == 0)
  if not status_ok then
    ok = false
    if how == "exit" and code == 124 then
      report[#report + 1] = ("! timed out after %d s"):format(TIMEOUT)
    else
      report[#report + 1] = ("! tide exited with %s %s"):format(tostring(how), tostring(code))
    end
  end

  if ok then
    print(("ok   %s (%d lines, ~%d s)"):format(name, #out, os.time() - t0))
  else
    print(("FAIL %s: output does not match expected/%s.txt"):format(name, name))
    print("--- expected (patterns)")
    print("+++ actual")
    for _, l in ipairs(report) do
      print(l)
    end
  end
  return ok
end

local all_ok = true
for i = 2, #arg do
  if not check(arg[i]) then
    all_ok = false
  end
end
os.exit(all_ok and 0 or 1)
