-- wrk script for benchmarks/bench_against_plain.py.
-- Arguments after "--": <token> <mode> [session prefix] [sessions]
--   mode "post": POST {"role":"user","content":"hello"} to
--                /api/conversations/<prefix>-<n>/messages, n cycling over <sessions> ids;
--   mode "noop": POST {"name":"system.noop"} to /api/tasks;
--   mode "get":  GET the URL's path as it is.
-- done() prints one JSON line: requests, seconds, non-2xx and socket errors, and latency
-- p50 / p99 / max / mean in milliseconds.

local method, prefix, sessions, counter = "get", "s", 50, 0
local body = '{"role":"user","content":"hello"}'

function init(args)
  wrk.headers["Authorization"] = "Bearer " .. args[1]
  method = args[2]
  prefix = args[3] or prefix
  sessions = tonumber(args[4] or sessions)
  if method == "post" or method == "noop" then
    wrk.headers["Content-Type"] = "application/json"
  end
end

function request()
  if method == "noop" then
    return wrk.format("POST", "/api/tasks", nil, '{"name":"system.noop"}')
  end
  if method ~= "post" then
    return wrk.format("GET", wrk.path)
  end
  counter = counter + 1
  local path = "/api/conversations/" .. prefix .. "-" .. (counter % sessions) .. "/messages"
  return wrk.format("POST", path, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.6f, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, latency.mean / 1000))
end
