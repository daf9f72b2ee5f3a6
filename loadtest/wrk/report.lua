-- wrk script: the plain GET of the command line, and a machine-readable summary.
-- done() prints one line "@@loadtest-json {...}" that loadtest/bench.py parses:
--   requests      completed requests (all statuses)
--   duration_us   length of the run as wrk measured it
--   rps           requests / duration
--   errors        connect + read + write + timeout + status; status counts responses with status > 399
--                 (wrk's own rule; wrk never sees 1xx as final responses), so "ok" means 2xx/3xx
--   latency_us    p50/p90/p99/p99.9/max of wrk's per-request latency (closed loop: see README)
-- Other scripts (mix.lua) load this file with dofile to reuse done().

function done(summary, latency, requests)
   local e = summary.errors
   local errors = e.connect + e.read + e.write + e.timeout + e.status
   local secs = summary.duration / 1e6
   io.write(string.format(
      '@@loadtest-json {"tool":"wrk","requests":%d,"duration_us":%d,"rps":%.1f,' ..
      '"errors":%d,"errors_detail":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
      '"bytes":%d,"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
      summary.requests, summary.duration, summary.requests / secs,
      errors, e.connect, e.read, e.write, e.timeout, e.status,
      summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
