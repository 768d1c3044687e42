-- wrk script: POST /v1/upgrade with well-formed Standard Webhooks headers and a signature that
-- never matches, so every request costs the agent a full HMAC check and ends in 401.
wrk.method = "POST"
wrk.body = '{"build": 4821}'
wrk.headers["content-type"] = "application/json"
wrk.headers["webhook-id"] = "msg_benchbadsignature"
wrk.headers["webhook-timestamp"] = tostring(os.time())
wrk.headers["webhook-signature"] = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

-- Status codes seen, so the summary proves the agent answered 401 (and the baseline 200).
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
