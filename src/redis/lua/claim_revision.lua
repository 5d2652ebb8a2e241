--[[
  Hands out a video's next revision number for a task: one more than both the last one handed out
  and the latest stored, so concurrent tasks of one video never share a revision; and the same
  number again when the same task asks again (its scenes step ran twice: a worker died between
  writing the scenes and saving the step), so a repeated step leaves no gap.

  Input:
    KEYS.revision   the video's revision counter
    KEYS.claim      the task's claimed revision

    ARGV.latest     the latest stored revision (0 for none)
    ARGV.ttl_s      ttl of the counter and the claim (s)

  Output:
    the revision handed out
]]
local claimed = redis.call('GET', KEY.claim)
if claimed then return tonumber(claimed) end
local next = math.max(tonumber(redis.call('GET', KEY.revision) or '0'), tonumber(ARG.latest)) + 1
redis.call('SET', KEY.revision, next, 'EX', ARG.ttl_s)
redis.call('SET', KEY.claim, next, 'EX', ARG.ttl_s)
return next
