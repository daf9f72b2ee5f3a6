-- wrk script: a host/path/method mix over the VirtualServices of the generated config.
-- Each script argument is one request "METHOD|host|path|body_bytes"; requests are sent in argument
-- order, cycling. The runner passes loadtest/mix.py's weighted sequence; by hand:
--   wrk -t1 -c64 -d10s -s loadtest/wrk/mix.lua http://127.0.0.1:PORT -- $(python -m loadtest.mix)
-- Requests are formatted once in init(), so the per-request cost in wrk is a table lookup.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local requests = {}
local count = 0
local next_index = 0

function init(args)
   for _, spec in ipairs(args) do
      local method, host, path, size = spec:match("^(%u+)|([^|]+)|([^|]+)|(%d+)$")
      if not method then
         error("mix.lua: bad entry '" .. spec .. "', expected METHOD|host|path|body_bytes")
      end
      local body = nil
      local headers = { Host = host }
      if tonumber(size) > 0 then
         body = string.rep("x", tonumber(size))
         headers["Content-Type"] = "application/octet-stream"
      end
      count = count + 1
      requests[count] = wrk.format(method, path, headers, body)
   end
   if count == 0 then
      error("mix.lua: no requests given; pass them after --, see python -m loadtest.mix")
   end
end

function request()
   next_index = next_index % count + 1
   return requests[next_index]
end
