-- N items ping-pong between two tasks: A puts on q1, B gets and puts on q2, A gets.
-- Run: build/tide queue_pingpong.lua [N]
local tide = require "tide"
local N = math.tointeger(tonumber(arg[1] or 1000000))

local q1, q2 = tide.Queue(), tide.Queue()

local function ping()
  for i = 1, N do
    q1:put(i)
    assert(q2:get() == i)
  end
end

local function pong()
  for _ = 1, N do q2:put(q1:get()) end
end

local t0 = tide.time()
tide.gather(tide.spawn(ping), tide.spawn(pong))
local dt = tide.time() - t0
print(("RESULT name=queue_pingpong impl=tide n=%d seconds=%.3f"):format(N, dt))
