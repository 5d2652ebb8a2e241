--[[
  One page of a task index set (src/projections/task_index/), newest first: walks the source
  sorted set (all members score 0, `<created ms>:<task id>`) down from the max to the min bound
  by lex, keeps the members that pass the filters, and stops when the page is full, the range is
  exhausted, or `budget` members were looked at (so one call never blocks Redis for long).

  Input:
    KEYS.source     the sorted set to walk
    KEYS.status     a status set a kept member must be in (checked only if ARGV.check_status is "1")
    KEYS.prompts    hash task id -> normalised prompt (read only if ARGV.needle is not "")

    ARGV.max        upper lex bound: "+", or "(<member>" (exclusive)
    ARGV.min        lower lex bound: "-", or "[<13 digits>" (inclusive)
    ARGV.limit      members wanted
    ARGV.budget     members to look at, at most
    ARGV.needle     a substring the task's prompt must contain ("" for none; plain, not a pattern)
    ARGV.check_status  "1" to keep only members of KEYS.status

  Output:
    {members kept (newest first), stop} where stop is "" when the range was walked to its end or
    the page is full, else the last member looked at (the budget ran out: the caller may go on
    below it)
]]
local limit, budget = tonumber(ARG.limit), tonumber(ARG.budget)
local needle, check = ARG.needle, ARG.check_status == '1'
local kept, seen, max = {}, 0, ARG.max
local chunk_size = (needle == '' and not check) and limit or 256
while true do
  local chunk = redis.call('ZRANGE', KEY.source, max, ARG.min, 'BYLEX', 'REV', 'LIMIT', 0,
    math.min(chunk_size, budget - seen))
  if #chunk == 0 then return {kept, ''} end
  for _, member in ipairs(chunk) do
    seen = seen + 1
    local ok = true
    if check and not redis.call('ZSCORE', KEY.status, member) then ok = false end
    if ok and needle ~= '' then
      local prompt = redis.call('HGET', KEY.prompts, string.sub(member, 15))
      ok = prompt and string.find(prompt, needle, 1, true) ~= nil
    end
    if ok then
      kept[#kept + 1] = member
      if #kept >= limit then return {kept, ''} end
    end
    if seen >= budget then return {kept, member} end
  end
  max = '(' .. chunk[#chunk]
end
