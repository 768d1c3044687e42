-- wrk script: GET /healthz, counting status codes, so the summary proves every answer was 200.
-- The reference for the reject path: the same server's cheapest route.
local counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) codes = {} end
function response(status, headers, body) codes[status] = (codes[status] or 0) + 1 end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    local c = t:get("codes")
    for k, v in pairs(c or {}) do counts[k] = (counts[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(counts) do table.insert(parts, k .. "=" .. v) end
  io.write("status_codes " .. table.concat(parts, ",") .. "\n")
  io.write(string.format("latency_p99_ms %.3f\n", latency:percentile(99) / 1000))
end
