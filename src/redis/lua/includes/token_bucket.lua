--[[
  Token bucket helpers, shared by take_token, take_tokens and ingest. A bucket is a hash: `tokens` in units
  of 1/TOKEN token, `at` in ms. A missing bucket is full.
  TOKEN, the units of one token, is a constant the including script declares
  (TOKEN_UNIT in src/security/rate_limit.ts).
]]
local function bucket_refill(key, capacity, rate, now)
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1]) or capacity
  local at = tonumber(state[2]) or now
  if now > at then
    tokens = math.min(capacity, tokens + (now - at) * rate)
    at = now
  end
  return tokens, at
end
local function bucket_store(key, tokens, at, ttl)
  redis.call('HSET', key, 'tokens', string.format('%d', tokens), 'at', string.format('%d', at))
  redis.call('PEXPIRE', key, ttl)
end
-- Takes one token from each of KEYS[first..], or none: 0 when taken, else the ms until every
-- bucket has one.
local function buckets_take_all(first, capacity, rate, now, ttl)
  local buckets, wait = {}, 0
  for i = first, #KEYS do
    local tokens, at = bucket_refill(KEYS[i], capacity, rate, now)
    if tokens < TOKEN then wait = math.max(wait, math.ceil((TOKEN - tokens) / rate)) end
    buckets[i] = {tokens, at}
  end
  if wait > 0 then return wait end
  for i = first, #KEYS do
    bucket_store(KEYS[i], buckets[i][1] - TOKEN, buckets[i][2], ttl)
  end
  return 0
end
