-- Cycles through pre-signed WeCom callbacks read from $WRK_REQUESTS (one "target<TAB>body" a line)
-- and prints one JSON line with throughput and latency percentiles (microseconds).
local reqs = {}
local counter = 0

function init(args)
  for line in io.lines(os.getenv("WRK_REQUESTS")) do
    local target, body = line:match("^([^\t]*)\t(.*)$")
    reqs[#reqs + 1] = wrk.format("POST", target, {["Content-Type"] = "application/json"}, body)
  end
  counter = math.random(#reqs)
end

function request()
  counter = counter % #reqs + 1
  return reqs[counter]
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,"timeout":%d,' ..
    '"p50":%d,"p95":%d,"p99":%d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
