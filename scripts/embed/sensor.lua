-- sensor.lua: run in the background by scripts/embed/sensor_app.c.
-- "sensor" is the application's C module: sensor.read(name) suspends this
-- task until the application's loop delivers a reading (about 50 ms).
local tide = require "tide"
local sensor = require "sensor"

-- Three reads at once take about 50 ms, not 150.
local t0 = tide.time()
local r = tide.gather(
  function() return sensor.read("temperature") end,
  function() return sensor.read("humidity") end,
  function() return sensor.read("pressure") end)
local elapsed = tide.time() - t0
print(string.format("readings: temperature=%.1f humidity=%.1f pressure=%.2f",
                    r[1], r[2], r[3]))
assert(elapsed < 0.12, "gather took " .. elapsed .. " s")
print("gather: concurrent (about 50 ms, not 150)")

-- A read runs while this task sleeps.
local pending = tide.spawn(sensor.read, "temperature")
tide.sleep(0.01)
print("after 10 ms the read is done: " .. tostring(pending:done()))
print("then: " .. pending:await())

-- An unknown sensor fails the call (tide_fail with a string).
local ok, err = pcall(sensor.read, "altitude")
print("unknown: " .. tostring(ok) .. ", " .. tostring(err))

-- A timeout cancels the read (the application's cancel callback runs).
local ok2, e = pcall(tide.wait_for, function() return sensor.read("slow") end, 0.01)
print("slow sensor: " .. tostring(ok2) .. ", " .. (tide.iserror(e) and e.kind or tostring(e)))

return string.format("%d readings, 1 unknown sensor, 1 timeout", #r + 1)
