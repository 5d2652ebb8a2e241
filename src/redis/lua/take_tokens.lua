--[[
  Takes one token from each bucket, or none: the rate-limit check of ingest.lua on its own, for
  PARTITIONS > 1, where the buckets (in partition 0) and the task (in its video's partition) are
  in different slots.

  Input:
    KEYS[1..]          the buckets

    ARGV.capacity      bucket capacity (units)
    ARGV.rate          refill (units per ms)
    ARGV.now_ms        now (ms)
    ARGV.ttl_ms        ttl of a bucket (ms)

  Output:
    0 when taken, else the ms until a token is available in every bucket
]]
--- @include "token_bucket"
local rate, now = tonumber(ARG.rate), tonumber(ARG.now_ms)
local buckets, wait = {}, 0
for i = 1, #KEYS do
  local tokens, at = bucket_refill(KEYS[i], tonumber(ARG.capacity), rate, now)
  if tokens < TOKEN then wait = math.max(wait, math.ceil((TOKEN - tokens) / rate)) end
  buckets[i] = {tokens, at}
end
if wait > 0 then return wait end
for i = 1, #KEYS do
  bucket_store(KEYS[i], buckets[i][1] - TOKEN, buckets[i][2], ARG.ttl_ms)
end
return 0
