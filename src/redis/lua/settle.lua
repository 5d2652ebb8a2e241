--[[
  Settles held entries of one partition, one after the other, each as if it ran alone (a batch of
  one is a single settle): while the caller still owns its work entry, appends its events and
  optionally settles the entry. Fencing: a settle whose entry is no longer pending for its consumer
  (another consumer reclaimed it) writes nothing and replies -1.

  One settle's failure is its own: its error is its reply and the next settle goes on (a settle
  that fails midway keeps what it wrote, as a lone script would: scripts are not rolled back). The
  batch's layout is checked before anything is written: a malformed batch writes nothing.

  Input:
    KEYS.events          event stream
    KEYS.dead_letters    dead-letter stream
    KEYS[3..]            per settle, in order: the task's timeline, then the stream of the held
                         entry (the webhook stream for workers, the event stream for downstream
                         groups)

    ARGV.timeline_ttl_s  ttl of the timelines (s)
    ARGV[2..]            per settle, in order, 10 fields and its events:
                           group, consumer, the held entry,
                           mode: "append" (events only), "ack" (events, then XACK), "dead"
                             (events, a dead-letter entry and a task.dead_lettered event, then
                             XACK),
                           task id ("" for an entry without one: nothing is appended),
                           time (ISO) of the dead letter and its event,
                           error, attempts and the original request (dead only; else ""),
                           n, then n events as triples: type, time (ISO), data (JSON)

  Output:
    per settle, in order: the id of the last event it appended ("" when none), -1 when fenced
    off, or its error
]]
local FIELDS = 10
local MODES = {append = true, ack = true, dead = true}

-- Where each settle's fields and keys start; nothing is written unless the whole batch parses.
local settles = {}
local arg, key = EXTRA_ARGS_FROM, EXTRA_KEYS_FROM
while arg <= #ARGV do
  local n = tonumber(ARGV[arg + FIELDS - 1])
  if not n or n < 0 or arg + FIELDS - 1 + 3 * n > #ARGV or not MODES[ARGV[arg + 3]]
    or key + 1 > #KEYS then
    return redis.error_reply('ERR settle ' .. (#settles + 1) .. ' of the batch is malformed')
  end
  settles[#settles + 1] = {arg = arg, key = key, n = n}
  arg = arg + FIELDS + 3 * n
  key = key + 2
end
if key ~= #KEYS + 1 then return redis.error_reply('ERR the batch has keys without a settle') end

local function settle(s)
  local timeline, held = KEYS[s.key], KEYS[s.key + 1]
  local group, consumer, entry, mode, task_id, at, failure, attempts, payload =
    unpack(ARGV, s.arg, s.arg + FIELDS - 2)
  local owned = redis.call('XPENDING', held, group, entry, entry, 1, consumer)
  if #owned == 0 then return -1 end
  local last = ''
  local function append(type, event_at, data)
    last = redis.call('XADD', KEY.events, '*', 'type', type, 'task_id', task_id, 'at', event_at,
      'data', data)
    redis.call('RPUSH', timeline, last)
  end
  if task_id ~= '' then
    local from = s.arg + FIELDS
    for i = from, from + 3 * s.n - 1, 3 do append(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
  end
  if mode == 'dead' then
    local dead = redis.call('XADD', KEY.dead_letters, '*', 'task_id', task_id, 'group', group,
      'entry', entry, 'error', failure, 'attempts', attempts, 'payload', payload, 'at', at)
    if task_id ~= '' then
      append('task.dead_lettered', at, cjson.encode({error = failure,
        attempts = tonumber(attempts), dead_letter_entry = dead}))
    end
  end
  if task_id ~= '' then redis.call('EXPIRE', timeline, ARG.timeline_ttl_s) end
  if mode ~= 'append' then redis.call('XACK', held, group, entry) end
  return last
end

local replies = {}
for i, s in ipairs(settles) do
  local ok, reply = pcall(settle, s)
  if ok then
    replies[i] = reply
  elseif type(reply) == 'table' and reply.err then
    replies[i] = reply
  else
    replies[i] = {err = 'ERR ' .. tostring(reply)}
  end
end
return replies
