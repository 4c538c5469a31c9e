-- basic.lua: one task that "fetches" data (simulated with a 1 s sleep).
-- Run: tide scripts/examples/basic.lua
local tide = require "tide"

local function fetch_data(url)
  print("Starting request to " .. url)
  tide.sleep(1) -- stands in for waiting on the network
  return "data from " .. url
end

local function main()
  local result = fetch_data("https://api.example.com")
  print(result)
end

tide.run(main)
