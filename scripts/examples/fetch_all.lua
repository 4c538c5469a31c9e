-- fetch_all.lua: three GETs at once over one session, printing each
-- status (one is a 404: a response, not an error). The seed fetched
-- httpbin.org; this starts a small httpbin-like server in the same process
-- so it runs anywhere. Give URLs as arguments to fetch those instead.
-- Run: tide scripts/examples/fetch_all.lua [URL ...]
local tide = require "tide"
local http = require "tide.http"

local function fetch(session, url)
  local res = session:get(url)
  return { url = url, status = res.status }
end

local function fetch_all(urls)
  local session <close> = http.session()
  local tasks = {}
  for i, url in ipairs(urls) do
    tasks[i] = tide.spawn(fetch, session, url)
  end
  return tide.gather(tasks)
end

local function main(...)
  local urls = { ... }
  local server
  if #urls == 0 then
    server = http.serve("127.0.0.1", 0, function(req)
      local code = tonumber(req.path:match("^/status/(%d+)$"))
      if req.path == "/get" or code then
        return { status = code or 200, body = req.method .. " " .. req.path .. "\n" }
      end
      return { status = 404, body = "not found\n" }
    end)
    urls = { server:url("/get"), server:url("/status/200"), server:url("/status/404") }
  end
  for _, r in ipairs(fetch_all(urls)) do
    print(r.status .. " - " .. r.url)
  end
  if server then server:close() end
end

tide.run(main, ...)
