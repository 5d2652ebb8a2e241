--[[
  Appends a task's events while the caller still owns the work entry, and optionally settles it.
  Fencing: if the entry is no longer pending for this consumer (another consumer reclaimed it),
  nothing is written and -1 is returned.

  Input:
    KEYS.events          event stream
    KEYS.timeline        the task's timeline
    KEYS.held_stream     the stream of the held entry (the webhook stream for workers, the event
                         stream for downstream groups)
    KEYS.dead_letters    dead-letter stream

    ARGV.group           consumer group
    ARGV.consumer        consumer
    ARGV.entry_id        the held entry
    ARGV.timeline_ttl_s  ttl of the timeline (s)
    ARGV.mode            "append" (events only), "ack" (events, then XACK), "dead" (events, a
                         dead-letter entry and a task.dead_lettered event, then XACK)
    ARGV.task_id         the task ("" for an entry without one: nothing is appended)
    ARGV.at              time (ISO) of the dead letter and its event
    ARGV.error           error (dead only)
    ARGV.attempts        attempts (dead only)
    ARGV.payload         the original request (dead only)
    ARGV[11..]           events as triples: type, time (ISO), data (JSON)

  Output:
    the id of the last event appended ("" when none), or -1 when fenced off
]]
local owned = redis.call('XPENDING', KEY.held_stream, ARG.group, ARG.entry_id, ARG.entry_id, 1,
  ARG.consumer)
if #owned == 0 then return -1 end
local last = ''
local function append(type, at, data)
  last = redis.call('XADD', KEY.events, '*', 'type', type, 'task_id', ARG.task_id, 'at', at,
    'data', data)
  redis.call('RPUSH', KEY.timeline, last)
end
if ARG.task_id ~= '' then
  for i = EXTRA_ARGS_FROM, #ARGV, 3 do append(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
end
if ARG.mode == 'dead' then
  local dead = redis.call('XADD', KEY.dead_letters, '*', 'task_id', ARG.task_id, 'group', ARG.group,
    'entry', ARG.entry_id, 'error', ARG.error, 'attempts', ARG.attempts, 'payload', ARG.payload,
    'at', ARG.at)
  if ARG.task_id ~= '' then
    append('task.dead_lettered', ARG.at, cjson.encode({error = ARG.error,
      attempts = tonumber(ARG.attempts), dead_letter_entry = dead}))
  end
end
if ARG.task_id ~= '' then redis.call('EXPIRE', KEY.timeline, ARG.timeline_ttl_s) end
if ARG.mode ~= 'append' then redis.call('XACK', KEY.held_stream, ARG.group, ARG.entry_id) end
return last
