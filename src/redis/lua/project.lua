--[[
  Applies one batch of events to every projection of a view generation, exactly once in effect:
  each projection's view writes, its new checkpoint and its consumer group's position move
  together, only while the caller holds the generation's projection lease and every checkpoint is
  the one its writes were planned from. The groups are never read with XREADGROUP (the projector
  reads the log once for all of them): this script sets each group to its checkpoint, with the
  entries read so far, so XINFO lag, retention and /health see the projection's real progress.

  Input:
    KEYS.lease                the lease of the generation's projections
    KEYS.events               event stream
    KEYS.view_generation      the view generation readers use
    KEYS[4..]                 the projections' checkpoints, in the order of their ARGV blocks

    ARGV.owner                lease owner
    ARGV.generation           the view generation written
    ARGV.projections          how many projections follow (P)
    ARGV[4..]                 P blocks of 5: group, the checkpoint the writes were planned from
                              ("0-0" for none), the new checkpoint, how many log entries lie
                              between the two, how many write commands the projection has; then
                              the write commands of every projection in block order, each as its
                              argument count followed by its arguments (no JSON: a view's JSON
                              is passed as it is)

  Output:
    1 when applied, -1 without the lease, -2 when a checkpoint moved, -3 when the views it writes
    were replaced by a newer generation (a rebuild was swapped in); a NOGROUP error when a group is
    missing (nothing written)
]]
if redis.call('GET', KEY.lease) ~= ARG.owner then return -1 end
if tonumber(redis.call('GET', KEY.view_generation) or '0') > tonumber(ARG.generation) then
  return -3
end

local groups = {}
for _, flat in ipairs(redis.call('XINFO', 'GROUPS', KEY.events)) do
  local info = {}
  for i = 1, #flat, 2 do info[flat[i]] = flat[i + 1] end
  groups[info['name']] = info
end

local count = tonumber(ARG.projections)
local blocks = {}
for p = 1, count do
  local at = EXTRA_ARGS_FROM + (p - 1) * 5
  local block = {group = ARGV[at], expected = ARGV[at + 1], checkpoint = ARGV[at + 2],
    entries = tonumber(ARGV[at + 3]), writes = tonumber(ARGV[at + 4])}
  if (redis.call('GET', KEYS[EXTRA_KEYS_FROM + p - 1]) or '0-0') ~= block.expected then
    return -2
  end
  if not groups[block.group] then
    return redis.error_reply('NOGROUP no consumer group ' .. block.group .. ' on the event stream')
  end
  blocks[p] = block
end

-- Every write is checked before the first is made.
local allowed = {SET = true, DEL = true, HSET = true, HDEL = true, HINCRBY = true,
  HINCRBYFLOAT = true, ZADD = true, ZREM = true, EXPIRE = true, BITFIELD = true}
local first = EXTRA_ARGS_FROM + count * 5
local at = first
for _, block in ipairs(blocks) do
  for _ = 1, block.writes do
    local command = ARGV[at + 1]
    if not allowed[command] then
      return redis.error_reply('ERR command not allowed in projection: ' .. tostring(command))
    end
    at = at + 1 + tonumber(ARGV[at])
  end
end
if at ~= #ARGV + 1 then return redis.error_reply('ERR projection writes do not add up') end

local stream = nil
local function stream_info(field)
  if stream == nil then
    stream = {}
    local info = redis.call('XINFO', 'STREAM', KEY.events)
    for i = 1, #info, 2 do stream[info[i]] = info[i + 1] end
  end
  return stream[field]
end

-- Entries read up to a group's new checkpoint (for XGROUP SETID … ENTRIESREAD, so XINFO lag is a
-- count): exact at the log's end; else the group's own count plus the batch when it stood at the
-- expected checkpoint; else counted from the log when few entries follow the checkpoint. Nil
-- (lag unknown until a later batch) otherwise.
local function entries_read(block, info)
  if block.checkpoint == stream_info('last-generated-id') then
    return stream_info('entries-added')
  end
  if info['last-delivered-id'] == block.expected then
    if info['entries-read'] then return info['entries-read'] + block.entries end
    if info['lag'] then return stream_info('entries-added') - info['lag'] + block.entries end
  end
  local after = redis.call('XRANGE', KEY.events, '(' .. block.checkpoint, '+', 'COUNT', 1001)
  if #after <= 1000 then return stream_info('entries-added') - #after end
  return nil
end

-- Each projection's writes, then its checkpoint and group: a write that fails (WRONGTYPE, say)
-- leaves the projections before it applied and moved on, so a retry (refused for them: their
-- checkpoints moved) plans only the rest again.
at = first
for p, block in ipairs(blocks) do
  for _ = 1, block.writes do
    local n = tonumber(ARGV[at])
    redis.call(unpack(ARGV, at + 1, at + n))
    at = at + 1 + n
  end
  redis.call('SET', KEYS[EXTRA_KEYS_FROM + p - 1], block.checkpoint)
  local info = groups[block.group]
  local read = entries_read(block, info)
  if read then
    redis.call('XGROUP', 'SETID', KEY.events, block.group, block.checkpoint, 'ENTRIESREAD', read)
  elseif info['last-delivered-id'] ~= block.checkpoint then
    redis.call('XGROUP', 'SETID', KEY.events, block.group, block.checkpoint)
  end
  -- Entries a version that read the group with XREADGROUP left pending: acknowledged once the
  -- checkpoint has passed them (the ones after it may still be applied by such a process).
  if info['pending'] > 0 then
    local pending = redis.call('XPENDING', KEY.events, block.group, '-', block.checkpoint, 1000)
    if #pending > 0 then
      local ids = {}
      for i, entry in ipairs(pending) do ids[i] = entry[1] end
      redis.call('XACK', KEY.events, block.group, unpack(ids))
    end
  end
end
return 1
