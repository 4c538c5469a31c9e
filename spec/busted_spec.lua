-- Specs for tide.busted (busted runs in the host, or under lua5.4 with
-- tide.so and --helper=tide.busted): each runs busted in another process on
-- a project made here, as a user would, with no setup of its own.
local tide = require "tide"
local fs = require "tide.fs"
local process = require "tide.process"
local S = require "spec.support"

local BUSTED = "/usr/bin/busted"
local LEFTOVER = [[
local tide = require "tide"
it("leaves a task", function()
  tide.spawn({ name = "forever" }, function() tide.sleep(1000) end)
  tide.spawn({ name = "child" }, function() tide.spawn({ name = "grandchild" }, tide.sleep, 1000); tide.sleep(1000) end)
  tide.sleep(0.01)
end)
it("comes next, alone", function() assert.equals(1, #tide.all_tasks()) end)
]]
-- a server started by a hook, its keep-alive connection tasks still open
-- when the test ends; a hook's worker that spawns a task per item the test
-- gives it; hooks that suspend
local HOOKS = [[
local tide = require "tide"
local http = require "tide.http"
describe("hooks", function()
  local srv, q, worker
  setup(function() tide.sleep(0.001) end)
  before_each(function()
    srv = http.serve("127.0.0.1", 0, function() return "ok" end)
    q = tide.Queue()
    worker = tide.spawn(function()
      while true do local n = q:get(); tide.spawn(tide.sleep, n) end
    end)
  end)
  after_each(function() srv:close(); worker:cancel() end)
  it("gets", function()
    finally(function() tide.sleep(0.001) end)
    assert.equals("ok", http.get(srv:url("/")).body)
  end)
  it("gets again", function()
    q:put(0.05) -- the worker's task, not the test's
    tide.sleep(0.001)
    assert.equals("ok", http.get(srv:url("/")).body)
  end)
end)
]]

-- A project with spec/x_spec.lua = source; returns its directory.
local function project(source)
  local dir = os.tmpname()
  os.remove(dir)
  fs.mkdir(dir .. "/spec", { parents = true })
  fs.write_file(dir .. "/spec/x_spec.lua", source)
  return dir
end

local function busted(dir, argv)
  local r = process.run(argv, { cwd = dir, timeout = 60 })
  fs.remove(dir, { recursive = true })
  return r.code, r.stdout .. r.stderr
end

-- lua5.4 with tide.so: the build's wrapper (it sets LUA_CPATH, and the
-- sanitizer runtimes for that build)
local function lua54()
  return (S.tide_bin():gsub("tide$", "lua54-tide"))
end

describe("tide.busted", function()
  it("fails a test that leaves tasks running and cancels them, with nothing set up", function()
    local code, out = busted(project(LEFTOVER), { S.tide_bin(), BUSTED, "-o", "plainTerminal", "spec" })
    assert.equals(1, code)
    assert.matches("the test left tasks running %(now cancelled%): tide.Task<forever, waiting>, "
      .. "tide.Task<child, waiting>, tide.Task<grandchild, waiting>", out)
    assert.matches("1 success / 0 failures / 1 error", out)
  end)

  it("does not count a hook's tasks or a server's connections as the test's", function()
    local code, out = busted(project(HOOKS), { S.tide_bin(), BUSTED, "-o", "plainTerminal", "spec" })
    assert.equals(0, code, out)
    assert.matches("2 successes / 0 failures / 0 errors", out)
  end)

  it("leaves a failing test's error located where it was raised", function()
    local code, out = busted(project([[
local tide = require "tide"
it("errors a table", function()
  tide.spawn(tide.sleep, 100) -- left running: cancelled all the same
  error({ code = 1 })
end)
it("comes next, alone", function() tide.sleep(0.01) assert.equals(1, #tide.all_tasks()) end)
]]), { S.tide_bin(), BUSTED, "-o", "plainTerminal", "spec" })
    assert.equals(1, code)
    assert.matches("spec/x_spec.lua:4: {", out, 1, true)
    assert.matches("1 success / 0 failures / 1 error", out, 1, true)
  end)

  it("runs busted in one tide.run under lua5.4 as --helper, so hooks may suspend", function()
    local code, out = busted(project(HOOKS),
      { lua54(), BUSTED, "--helper=tide.busted", "-o", "plainTerminal", "spec" })
    assert.equals(0, code, out)
    assert.matches("2 successes / 0 failures / 0 errors", out)
    code, out = busted(project(LEFTOVER),
      { lua54(), BUSTED, "--helper=tide.busted", "-o", "plainTerminal", "spec" })
    assert.equals(1, code)
    assert.matches("the test left tasks running", out)
  end)
end)
