-- wrk script for the ingest benchmark: POSTs a webhook body made unique per request.
--
-- Usage: wrk -s bench/wrk_unique.lua URL -- TEMPLATE HEADER TOKEN NONCE
--   TEMPLATE  a file with the JSON body; every "@@ID@@" in it is replaced by a per-request id
--             (bench/run.ts writes it from tests/fixtures/webhooks/new-video.json, with the id
--             in idempotency_key and video_id)
--   HEADER    the authentication header name (e.g. x-webhook-token)
--   TOKEN     its value
--   NONCE     a run-unique string, so ids never repeat across runs
-- Prints one line "WRK_JSON {...}" with requests, errors and latency percentiles (microseconds).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

local parts = {}
local headers = {}
local nonce = ""
local counter = 0

function init(args)
  local file = assert(io.open(args[1], "r"), "cannot open the body template")
  local template = file:read("*a")
  file:close()
  local from = 1
  while true do
    local s, e = string.find(template, "@@ID@@", from, true)
    if not s then break end
    table.insert(parts, string.sub(template, from, s - 1))
    from = e + 1
  end
  table.insert(parts, string.sub(template, from))
  headers["Content-Type"] = "application/json"
  if args[2] and args[2] ~= "" then headers[args[2]] = args[3] end
  nonce = (args[4] or "run") .. "-t" .. tostring(thread_number)
end

function request()
  counter = counter + 1
  local id = nonce .. "-" .. counter
  local body = parts[1]
  for i = 2, #parts do body = body .. id .. parts[i] end
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
