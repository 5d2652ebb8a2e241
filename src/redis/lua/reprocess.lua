--[[
  Starts a new run of an existing task: appends its request to the work stream again and records
  task.reprocess_requested (who asked, why, which run) in its timeline. Compare-and-set on the
  task's run number, so two operators asking at once start one run; for a dead-letter redrive the
  dead entry is deleted in the same script, so a redrive happens exactly once.

  Input:
    KEYS.webhooks            webhook stream
    KEYS.events              event stream
    KEYS.timeline            the task's timeline
    KEYS.dead_letters        dead-letter stream
    KEYS.run                 the task's run counter

    ARGV.task_id             the task
    ARGV.payload             the request (JSON)
    ARGV.at                  time (ISO)
    ARGV.expected_run        the run the caller saw as current
    ARGV.data                data of the event (JSON), without run and webhook_entry
    ARGV.dead_letter_entry   the dead letter to redrive ("" for none)
    ARGV.timeline_ttl_s      ttl of the timeline and the run counter (s)

  Output:
    the new run number, -1 when the dead letter was already redriven, -2 when another reprocess
    of the task won
]]
local current = tonumber(redis.call('GET', KEY.run) or '1')
if current ~= tonumber(ARG.expected_run) then return -2 end
if ARG.dead_letter_entry ~= '' and redis.call('XDEL', KEY.dead_letters, ARG.dead_letter_entry) == 0 then
  return -1
end
local run = current + 1
redis.call('SET', KEY.run, run)
redis.call('EXPIRE', KEY.run, ARG.timeline_ttl_s)
local entry = redis.call('XADD', KEY.webhooks, '*', 'task_id', ARG.task_id, 'payload', ARG.payload,
  'run', run)
local data = cjson.decode(ARG.data)
data.run = run
data.webhook_entry = entry
local ev = redis.call('XADD', KEY.events, '*', 'type', 'task.reprocess_requested',
  'task_id', ARG.task_id, 'at', ARG.at, 'data', cjson.encode(data))
redis.call('RPUSH', KEY.timeline, ev)
redis.call('EXPIRE', KEY.timeline, ARG.timeline_ttl_s)
return run
