--[[
  Takes one token from a bucket, refilling it for the time elapsed since the last call.
  The key expires once a bucket would have refilled completely.

  Input:
    KEYS.bucket      the bucket (a hash)

    ARGV.capacity    capacity in units (burst * TOKEN)
    ARGV.rate        refill in units per ms (tokens per minute)
    ARGV.now_ms      now (ms)
    ARGV.ttl_ms      the bucket's ttl (ms)

  Output:
    {1, tokens left in units} when taken, {0, ms until a token is available} otherwise
]]
--- @include "token_bucket"
local rate = tonumber(ARG.rate)
local tokens, at = bucket_refill(KEY.bucket, tonumber(ARG.capacity), rate, tonumber(ARG.now_ms))
local taken = 0
if tokens >= TOKEN then
  tokens = tokens - TOKEN
  taken = 1
end
bucket_store(KEY.bucket, tokens, at, ARG.ttl_ms)
if taken == 1 then return {1, tokens} end
return {0, math.ceil((TOKEN - tokens) / rate)}
