--[[
  Keeps a long task's claim fresh: resets the entry's idle time, only if this consumer owns it.

  Input:
    KEYS.stream      the stream of the entry

    ARGV.group       consumer group
    ARGV.consumer    consumer
    ARGV.entry_id    the entry

  Output:
    1 when refreshed, 0 when the entry is no longer ours
]]
local owned = redis.call('XPENDING', KEY.stream, ARG.group, ARG.entry_id, ARG.entry_id, 1,
  ARG.consumer)
if #owned == 0 then return 0 end
redis.call('XCLAIM', KEY.stream, ARG.group, ARG.consumer, 0, ARG.entry_id, 'JUSTID')
return 1
