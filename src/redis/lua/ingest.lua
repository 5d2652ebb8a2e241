--[[
  Records a webhook as a new task, or finds the task an idempotency key already made, after
  checking the sender's rate-limit buckets: one round trip for the whole hot path.
  The key, the work entry, the task.queued event and the timeline index are written together,
  so no crash can leave a key without its task or a task without its key. A duplicate neither
  appends nor spends tokens (with PARTITIONS > 1 the tokens were taken before, by
  take_tokens.lua); a limited request spends none and appends nothing. The key keeps the
  request's fingerprint: the same key with another request is a conflict (409), as at Stripe.
  With PARTITIONS > 1 the task id comes from the key's claim (claim_idempotency.lua), so a retry
  after a crash between the claim and this script appends the same task, once (found by its key,
  or by its timeline).

  Input:
    KEYS.idempotency          the idempotency key (ignored unless ARGV.has_idempotency_key is "1")
    KEYS.webhooks             webhook stream
    KEYS.events               event stream
    KEYS.timeline             the new task's timeline
    KEYS[5..]                 rate-limit buckets: one token is taken from each, or none

    ARGV.task_id              the new task's id
    ARGV.idempotency_ttl_s    ttl of the idempotency key (s)
    ARGV.payload              the validated request (JSON)
    ARGV.at                   time (ISO)
    ARGV.has_idempotency_key  "1" when an idempotency key is given, else "0"
    ARGV.video_id
    ARGV.user_id
    ARGV.is_revision          "1" or "0"
    ARGV.idempotency_key      the idempotency key as sent ("" for none)
    ARGV.prompt               the request's prompt (at most PROMPT_MAX_CHARS), in task.queued
    ARGV.timeline_ttl_s       ttl of the timeline (s)
    ARGV.bucket_capacity      bucket capacity (units)
    ARGV.bucket_rate          refill (units per ms)
    ARGV.now_ms               now (ms)
    ARGV.bucket_ttl_ms        ttl of a bucket (ms)
    ARGV.fingerprint          the request's fingerprint, kept with the idempotency key

  Output:
    {task id, 0} when appended, {task id, 1} for a duplicate, {task id, 2} when the key made
    that task from another request (a conflict), {"", -1, ms until allowed} when rate-limited
]]
--- @include "token_bucket"
if ARG.has_idempotency_key == '1' then
  local existing = redis.call('GET', KEY.idempotency)
  if existing then
    -- "task fingerprint"; a key stored before fingerprints existed matches any request.
    local task, fingerprint = string.match(existing, '^(%S+) (%S+)$')
    if not task then return {existing, 1} end
    if fingerprint ~= ARG.fingerprint then return {task, 2} end
    -- A write that changes nothing (the same TTL), so a WAIT after this reply (ACK_REPLICAS)
    -- waits for the replicas to have everything before it, the first request's writes included.
    local ttl = redis.call('PTTL', KEY.idempotency)
    if ttl > 0 then redis.call('PEXPIRE', KEY.idempotency, ttl) end
    return {task, 1}
  end
end
-- The task exists already (a retry after a crash between the claim and this script, whose key
-- here is gone): found, not appended twice.
if redis.call('EXISTS', KEY.timeline) == 1 then return {ARG.task_id, 1} end
if #KEYS >= EXTRA_KEYS_FROM then
  local wait = buckets_take_all(EXTRA_KEYS_FROM, tonumber(ARG.bucket_capacity),
    tonumber(ARG.bucket_rate), tonumber(ARG.now_ms), ARG.bucket_ttl_ms)
  if wait > 0 then return {'', -1, wait} end
end
local entry = redis.call('XADD', KEY.webhooks, '*', 'task_id', ARG.task_id, 'payload', ARG.payload)
local data = {video_id = ARG.video_id, user_id = ARG.user_id, is_revision = (ARG.is_revision == '1'),
  webhook_entry = entry, prompt = ARG.prompt}
if ARG.has_idempotency_key == '1' then data.idempotency_key = ARG.idempotency_key end
local ev = redis.call('XADD', KEY.events, '*', 'type', 'task.queued', 'task_id', ARG.task_id,
  'at', ARG.at, 'data', cjson.encode(data))
redis.call('RPUSH', KEY.timeline, ev)
redis.call('EXPIRE', KEY.timeline, ARG.timeline_ttl_s)
if ARG.has_idempotency_key == '1' then
  redis.call('SET', KEY.idempotency, ARG.task_id .. ' ' .. ARG.fingerprint, 'EX',
    ARG.idempotency_ttl_s)
end
return {ARG.task_id, 0}
