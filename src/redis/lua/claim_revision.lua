--[[
  Hands out a video's next revision number: one more than both the last one handed out and the
  latest stored, so concurrent tasks of one video never share a revision.

  Input:
    KEYS.revision   the video's revision counter

    ARGV.latest     the latest stored revision (0 for none)
    ARGV.ttl_s      ttl of the counter (s)

  Output:
    the revision handed out
]]
local next = math.max(tonumber(redis.call('GET', KEY.revision) or '0'), tonumber(ARG.latest)) + 1
redis.call('SET', KEY.revision, next, 'EX', ARG.ttl_s)
return next
