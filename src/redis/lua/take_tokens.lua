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
return buckets_take_all(1, tonumber(ARG.capacity), tonumber(ARG.rate), tonumber(ARG.now_ms),
  ARG.ttl_ms)
