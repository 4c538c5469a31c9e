-- semaphore_http.lua: 50 GETs through one session, at most 10 in flight
-- (tide.Semaphore(10)); the server answers each after 0.1 s, so about
-- 0.5 s in all. The server runs in the same process.
-- Run: tide scripts/examples/semaphore_http.lua
local tide = require "tide"
local http = require "tide.http"

local in_flight, max_in_flight = 0, 0

local function fetch_with_limit(session, url, sem)
  local guard <close> = sem:acquire() -- at most 10 requests at once
  in_flight = in_flight + 1
  max_in_flight = math.max(max_in_flight, in_flight)
  local res = session:get(url)
  in_flight = in_flight - 1
  return res.body
end

local function main()
  local server <close> = http.serve("127.0.0.1", 0, function(req)
    tide.sleep(0.1) -- a slow backend
    return { status = 200, body = "n=" .. req.query.n }
  end)
  local sem = tide.Semaphore(10)
  local session <close> = http.session()
  local start = tide.time()
  local tasks = {}
  for i = 0, 49 do
    tasks[#tasks + 1] = tide.spawn(fetch_with_limit, session, server:url("/get?n=" .. i), sem)
  end
  local results = tide.gather(tasks)
  print("Got " .. #results .. " responses")
  print("first: " .. results[1] .. ", last: " .. results[50])
  print("max in flight: " .. max_in_flight)
  print(string.format("elapsed: %.2fs", tide.time() - start))
end

tide.run(main)
