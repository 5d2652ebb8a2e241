--[[
  Deletes a dead letter for good and records task.dead_letter_deleted (who asked, why) in its
  task's timeline, in one script: the deletion and its record cannot be separated, and two
  operators deleting the same dead letter delete (and record) it once.

  Input:
    KEYS.dead_letters        dead-letter stream
    KEYS.events              event stream
    KEYS.timeline            the task's timeline

    ARGV.entry               the dead letter's id
    ARGV.task_id             its task ("" for a malformed entry without one: deleted, not recorded)
    ARGV.at                  time (ISO)
    ARGV.data                data of the event (JSON: requested_by, reason), without the entry
    ARGV.timeline_ttl_s      ttl of the timeline (s)

  Output:
    1 when deleted, 0 when it was already gone (redriven or deleted)
]]
if redis.call('XDEL', KEY.dead_letters, ARG.entry) == 0 then return 0 end
if ARG.task_id == '' then return 1 end
local data = cjson.decode(ARG.data)
data.dead_letter_entry = ARG.entry
local ev = redis.call('XADD', KEY.events, '*', 'type', 'task.dead_letter_deleted',
  'task_id', ARG.task_id, 'at', ARG.at, 'data', cjson.encode(data))
redis.call('RPUSH', KEY.timeline, ev)
redis.call('EXPIRE', KEY.timeline, ARG.timeline_ttl_s)
return 1
