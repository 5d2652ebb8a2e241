--[[
  Applies a batch of events to a projection exactly once in effect: the view writes, the new
  checkpoint and the XACKs happen together, and only while the caller holds the lease and the
  checkpoint is the one it read.

  Input:
    KEYS.lease                the projection's lease
    KEYS.checkpoint           the projection's checkpoint
    KEYS.events               event stream
    KEYS.view_generation      the view generation readers use

    ARGV.owner                lease owner
    ARGV.expected_checkpoint  the checkpoint the batch was planned from ("0-0" for none)
    ARGV.checkpoint           the new checkpoint
    ARGV.group                consumer group
    ARGV.writes               JSON array of write commands
    ARGV.generation           the view generation written
    ARGV[7..]                 entry ids to XACK

  Output:
    1 when applied, -1 without the lease, -2 when the checkpoint moved, -3 when the views it
    writes were replaced by a newer generation (a rebuild was swapped in)
]]
if redis.call('GET', KEY.lease) ~= ARG.owner then return -1 end
if tonumber(redis.call('GET', KEY.view_generation) or '0') > tonumber(ARG.generation) then
  return -3
end
local checkpoint = redis.call('GET', KEY.checkpoint) or '0-0'
if checkpoint ~= ARG.expected_checkpoint then return -2 end
local allowed = {SET = true, DEL = true, HSET = true, HDEL = true, HINCRBY = true,
  HINCRBYFLOAT = true, ZADD = true, ZREM = true, EXPIRE = true, BITFIELD = true}
for _, op in ipairs(cjson.decode(ARG.writes)) do
  if not allowed[op[1]] then
    return redis.error_reply('ERR command not allowed in projection: ' .. op[1])
  end
  redis.call(unpack(op))
end
redis.call('SET', KEY.checkpoint, ARG.checkpoint)
if #ARGV >= EXTRA_ARGS_FROM then
  redis.call('XACK', KEY.events, ARG.group, unpack(ARGV, EXTRA_ARGS_FROM))
end
return 1
