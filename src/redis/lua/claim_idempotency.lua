--[[
  With PARTITIONS > 1: claims an idempotency key for a task in the partition the (user, key) pair
  hashes to, before the task is appended in its video's partition (ingest.lua, idempotent on the
  task id). A request's video may differ from the one the key was first used with, so the key
  cannot live in the video's partition alone. A crash between the claim and the ingest leaves a
  claim without a task: the client's retry finds the claim and appends that task then. A retry
  with another body finds a conflict; when the claimed task does not exist (the caller checks its
  partition), it calls again with ARGV.stale, and the claim is taken over if it is still that
  and older than 10 s (a claim whose ingest is still on its way is never taken over).

  Input:
    KEYS.claim          the claim of the idempotency key

    ARGV.task_id        the task this request would make (its id carries its partition)
    ARGV.fingerprint    the request's fingerprint
    ARGV.ttl_s          ttl of the claim (IDEMPOTENCY_TTL_S)
    ARGV.stale          "" or a claim's value to replace (its task was never appended)

  Output:
    {task id, 0} when claimed now, {task id, 1} when claimed before for the same request,
    {task id, 2} when claimed before for another request (a conflict)
]]
local existing = redis.call('GET', KEY.claim)
if existing and existing == ARG.stale and
    redis.call('PTTL', KEY.claim) <= tonumber(ARG.ttl_s) * 1000 - 10000 then
  existing = false
end
if existing then
  local task, fingerprint = string.match(existing, '^(%S+) (%S+)$')
  if fingerprint ~= ARG.fingerprint then return {task, 2} end
  return {task, 1}
end
redis.call('SET', KEY.claim, ARG.task_id .. ' ' .. ARG.fingerprint, 'EX', ARG.ttl_s)
return {ARG.task_id, 0}
