-- producer_consumer.lua: a bounded queue shared by one producer and two
-- consumers. nil is the stop signal; a consumer that sees it puts it back
-- so the other consumer stops too.
-- Run: tide scripts/examples/producer_consumer.lua
local tide = require "tide"

local function producer(queue, items)
  for _, item in ipairs(items) do
    queue:put(item)
    print("Produced: " .. item)
    tide.sleep(0.1)
  end
  queue:put(nil) -- no more items
end

local function consumer(queue, name)
  while true do
    local item = queue:get()
    if item == nil then
      queue:put(nil) -- leave it in the queue for the next consumer
      break
    end
    print(name .. " consumed: " .. item)
    tide.sleep(0.3)
    queue:task_done()
  end
end

local function main()
  local start = tide.time()
  local queue = tide.Queue(5)
  local items = {}
  for i = 0, 5 do
    items[#items + 1] = "task_" .. i
  end

  tide.gather(
    tide.spawn(producer, queue, items),
    tide.spawn(consumer, queue, "Consumer-1"),
    tide.spawn(consumer, queue, "Consumer-2")
  )

  print(string.format("elapsed: %.2fs", tide.time() - start))
end

tide.run(main)
