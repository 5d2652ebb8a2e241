--[[
  A prompt search of the task index through its trigram bitmaps (src/projections/task_index/):
  the rows of the needle's trigrams are ANDed block by block, which leaves the positions of the
  tasks whose prompts may hold the needle (every trigram of it, hashed). Those candidates are
  mapped to their index members, kept within the bounds, sorted newest first and checked (status,
  then the prompt itself) until the page is full. The result is exact: a bitmap only rules tasks
  out. Nothing is returned but a "too many" mark when more than `cap` tasks are candidates (a
  needle too common or too short to narrow): the caller walks the set instead.

  Input:
    KEYS.positions    hash position -> index member
    KEYS.prompts      hash task id -> normalised prompt
    KEYS.status       a status set a kept member must be in (checked only if ARGV.check_status is "1")
    KEYS[4..]         the bitmap blocks to search (string keys)

    ARGV.slots        the needle's trigram rows, comma-separated
    ARGV.blocks       the blocks' numbers, comma-separated, in the order of KEYS[4..]
    ARGV.block_bits   positions per block
    ARGV.max          upper lex bound: "+", or "(<member>" (exclusive)
    ARGV.min          lower lex bound: "-", or "[<13 digits>" (inclusive)
    ARGV.limit        members wanted
    ARGV.needle       the normalised needle (plain, not a pattern)
    ARGV.check_status "1" to keep only members of KEYS.status
    ARGV.cap          most candidates to check

  Output:
    {members kept (newest first), ""}, or {{}, "too-many"} when the candidates exceed the cap
]]
local slots = {}
for s in string.gmatch(ARG.slots, '%d+') do slots[#slots + 1] = tonumber(s) end
local blocks = {}
for b in string.gmatch(ARG.blocks, '%d+') do blocks[#blocks + 1] = tonumber(b) end
local bits = tonumber(ARG.block_bits)
local row_bytes = bits / 8
local cap = tonumber(ARG.cap)
local candidates = {}
for k, block in ipairs(blocks) do
  local key = KEYS[EXTRA_KEYS_FROM + k - 1]
  local rows = {}
  for i, slot in ipairs(slots) do
    rows[i] = redis.call('GETRANGE', key, slot * row_bytes, (slot + 1) * row_bytes - 1)
  end
  local first = rows[1]
  local at = 1
  while true do
    local i = string.find(first, '[^%z]', at)
    if not i then break end
    local v = string.byte(first, i)
    for r = 2, #rows do
      v = bit.band(v, string.byte(rows[r], i) or 0)
      if v == 0 then break end
    end
    if v ~= 0 then
      for b = 0, 7 do
        if bit.band(v, bit.lshift(1, 7 - b)) ~= 0 then
          candidates[#candidates + 1] = block * bits + (i - 1) * 8 + b
          if #candidates > cap then return {{}, 'too-many'} end
        end
      end
    end
    at = i + 1
  end
end
local max, min = ARG.max, ARG.min
local upper = max ~= '+' and string.sub(max, 2) or nil
local lower = min ~= '-' and string.sub(min, 2) or nil
local members = {}
for from = 1, #candidates, 500 do
  local chunk = {}
  for i = from, math.min(from + 499, #candidates) do chunk[#chunk + 1] = candidates[i] end
  local found = redis.call('HMGET', KEY.positions, unpack(chunk))
  for _, m in ipairs(found) do
    if m and (upper == nil or m < upper) and (lower == nil or m >= lower) then
      members[#members + 1] = m
    end
  end
end
table.sort(members, function(a, b) return a > b end)
local limit, needle, check = tonumber(ARG.limit), ARG.needle, ARG.check_status == '1'
local kept = {}
for _, m in ipairs(members) do
  if not check or redis.call('ZSCORE', KEY.status, m) then
    local prompt = redis.call('HGET', KEY.prompts, string.sub(m, 15))
    if prompt and string.find(prompt, needle, 1, true) then
      kept[#kept + 1] = m
      if #kept >= limit then break end
    end
  end
end
return {kept, ''}
