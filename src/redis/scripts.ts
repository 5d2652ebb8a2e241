import { Script } from "./script.ts";
import { TOKEN_BUCKET_LUA } from "../security/rate_limit.ts";

/**
 * Records a webhook as a new task, or finds the task an idempotency key already made, after
 * checking the sender's rate-limit buckets — one round trip for the whole hot path.
 * The key, the work entry, the task.queued event and the timeline index are written together,
 * so no crash can leave a key without its task or a task without its key. A duplicate neither
 * appends nor spends tokens; a limited request spends none and appends nothing.
 *
 * KEYS[1] idempotency key (ignored when ARGV[5] is "0")
 * KEYS[2] webhook stream   KEYS[3] event stream   KEYS[4] task timeline   KEYS[5..] buckets
 * ARGV[1] task id   ARGV[2] idempotency ttl (s)   ARGV[3] payload JSON   ARGV[4] time (ISO)
 * ARGV[5] "1" when an idempotency key is given   ARGV[6] video id   ARGV[7] user id
 * ARGV[8] is_revision "1"/"0"   ARGV[9] idempotency key as sent   ARGV[10] timeline ttl (s)
 * ARGV[11] bucket capacity (units)   ARGV[12] refill (units/ms)   ARGV[13] now (ms)
 * ARGV[14] bucket ttl (ms)
 * Returns {task id, 1 if duplicate else 0}, or {"", -1, ms until allowed} when rate-limited.
 */
export const ingestScript = new Script(
  "ingest",
  `${TOKEN_BUCKET_LUA}
if ARGV[5] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {existing, 1} end
end
if #KEYS > 4 then
  local rate, now = tonumber(ARGV[12]), tonumber(ARGV[13])
  local buckets, wait = {}, 0
  for i = 5, #KEYS do
    local tokens, at = bucket_refill(KEYS[i], tonumber(ARGV[11]), rate, now)
    if tokens < TOKEN then wait = math.max(wait, math.ceil((TOKEN - tokens) / rate)) end
    buckets[i] = {tokens, at}
  end
  if wait > 0 then return {'', -1, wait} end
  for i = 5, #KEYS do bucket_store(KEYS[i], buckets[i][1] - TOKEN, buckets[i][2], ARGV[14]) end
end
local entry = redis.call('XADD', KEYS[2], '*', 'task_id', ARGV[1], 'payload', ARGV[3])
local data = {video_id = ARGV[6], user_id = ARGV[7], is_revision = (ARGV[8] == '1'), webhook_entry = entry}
if ARGV[5] == '1' then data.idempotency_key = ARGV[9] end
local ev = redis.call('XADD', KEYS[3], '*', 'type', 'task.queued', 'task_id', ARGV[1], 'at', ARGV[4], 'data', cjson.encode(data))
redis.call('RPUSH', KEYS[4], ev)
redis.call('EXPIRE', KEYS[4], ARGV[10])
if ARGV[5] == '1' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return {ARGV[1], 0}
`,
);

/**
 * Appends a task's events while the caller still owns the work entry, and optionally settles it.
 * Fencing: if the entry is no longer pending for this consumer (another worker reclaimed it),
 * nothing is written and -1 is returned.
 *
 * KEYS[1] event stream   KEYS[2] task timeline   KEYS[3] the stream of the held entry (the webhook
 * stream for workers, the event stream for downstream groups)   KEYS[4] dead-letter stream
 * ARGV[1] group   ARGV[2] consumer   ARGV[3] held entry id   ARGV[4] timeline ttl (s)
 * ARGV[5] mode: "append" (events only), "ack" (events, then XACK), "dead" (events, a dead-letter
 *         entry and a task.dead_lettered event, then XACK)
 * ARGV[6] task id ("" for an entry without one)   ARGV[7] time (ISO)
 * ARGV[8] error (dead only)   ARGV[9] attempts (dead only)   ARGV[10] original payload (dead only)
 * ARGV[11..] events as triples: type, time, data JSON
 * Returns the id of the last event appended (or "" when none), or -1 when fenced off.
 */
export const settleScript = new Script(
  "settle",
  `
local owned = redis.call('XPENDING', KEYS[3], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #owned == 0 then return -1 end
local last = ''
local function append(type, at, data)
  last = redis.call('XADD', KEYS[1], '*', 'type', type, 'task_id', ARGV[6], 'at', at, 'data', data)
  redis.call('RPUSH', KEYS[2], last)
end
if ARGV[6] ~= '' then
  for i = 11, #ARGV, 3 do append(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
end
if ARGV[5] == 'dead' then
  local dead = redis.call('XADD', KEYS[4], '*', 'task_id', ARGV[6], 'group', ARGV[1], 'entry', ARGV[3],
    'error', ARGV[8], 'attempts', ARGV[9], 'payload', ARGV[10], 'at', ARGV[7])
  if ARGV[6] ~= '' then
    append('task.dead_lettered', ARGV[7], cjson.encode({error = ARGV[8], attempts = tonumber(ARGV[9]), dead_letter_entry = dead}))
  end
end
if ARGV[6] ~= '' then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
if ARGV[5] ~= 'append' then redis.call('XACK', KEYS[3], ARGV[1], ARGV[3]) end
return last
`,
);

/**
 * Keeps a long task's claim fresh: resets the entry's idle time, only if this consumer owns it.
 * KEYS[1] stream   ARGV[1] group   ARGV[2] consumer   ARGV[3] entry id
 * Returns 1 when refreshed, 0 when the entry is no longer ours.
 */
export const heartbeatScript = new Script(
  "heartbeat",
  `
local owned = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #owned == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
`,
);

/**
 * Applies a batch of events to a projection exactly once in effect: the view writes, the new
 * checkpoint and the XACKs happen together, and only while the caller holds the lease and the
 * checkpoint is the one it read.
 *
 * KEYS[1] lease   KEYS[2] checkpoint   KEYS[3] event stream   KEYS[4] view generation
 * ARGV[1] lease owner   ARGV[2] expected checkpoint ("0-0" for none)   ARGV[3] new checkpoint
 * ARGV[4] consumer group   ARGV[5] JSON array of write commands   ARGV[6] the view generation
 * written   ARGV[7..] entry ids to XACK
 * Returns 1 when applied, -1 without the lease, -2 when the checkpoint moved, -3 when the views
 * it writes were replaced by a newer generation (a rebuild was swapped in).
 */
export const projectScript = new Script(
  "project",
  `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if tonumber(redis.call('GET', KEYS[4]) or '0') > tonumber(ARGV[6]) then return -3 end
local checkpoint = redis.call('GET', KEYS[2]) or '0-0'
if checkpoint ~= ARGV[2] then return -2 end
local allowed = {SET = true, DEL = true, HSET = true, HDEL = true, HINCRBY = true,
  HINCRBYFLOAT = true, ZADD = true, ZREM = true, EXPIRE = true}
for _, op in ipairs(cjson.decode(ARGV[5])) do
  if not allowed[op[1]] then return redis.error_reply('ERR command not allowed in projection: ' .. op[1]) end
  redis.call(unpack(op))
end
redis.call('SET', KEYS[2], ARGV[3])
if #ARGV >= 7 then redis.call('XACK', KEYS[3], ARGV[4], unpack(ARGV, 7)) end
return 1
`,
);

/**
 * Hands out a video's next revision number: one more than both the last one handed out and the
 * latest stored, so concurrent tasks of one video never share a revision.
 * KEYS[1] the video's revision counter   ARGV[1] latest stored revision (0 for none)   ARGV[2] ttl (s)
 */
export const claimRevisionScript = new Script(
  "claim-revision",
  `
local next = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[1])) + 1
redis.call('SET', KEYS[1], next, 'EX', ARGV[2])
return next
`,
);

/**
 * Renews a lease only for its owner. KEYS[1] lease   ARGV[1] owner   ARGV[2] ttl (ms)
 * Returns 1 when renewed, 0 when someone else holds it or it expired.
 */
export const renewLeaseScript = new Script(
  "renew-lease",
  `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`,
);

/** Releases a lease only for its owner. KEYS[1] lease   ARGV[1] owner */
export const releaseLeaseScript = new Script(
  "release-lease",
  `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`,
);

/**
 * Starts a new run of an existing task: appends its request to the work stream again and records
 * `task.reprocess_requested` (who asked, why, which run) in its timeline. Compare-and-set on the
 * task's run number, so two operators asking at once start one run; for a dead-letter redrive the
 * dead entry is deleted in the same script, so a redrive happens exactly once.
 *
 * KEYS[1] webhook stream   KEYS[2] event stream   KEYS[3] task timeline   KEYS[4] dead-letter stream
 * KEYS[5] task run counter
 * ARGV[1] task id   ARGV[2] payload JSON   ARGV[3] time (ISO)   ARGV[4] expected current run
 * ARGV[5] data JSON of the event, without `run`   ARGV[6] dead-letter entry id ("" for none)
 * ARGV[7] timeline ttl (s)
 * Returns the new run number, -1 when the dead letter was already redriven, -2 when another
 * reprocess of the task won.
 */
export const reprocessScript = new Script(
  "reprocess",
  `
local current = tonumber(redis.call('GET', KEYS[5]) or '1')
if current ~= tonumber(ARGV[4]) then return -2 end
if ARGV[6] ~= '' and redis.call('XDEL', KEYS[4], ARGV[6]) == 0 then return -1 end
local run = current + 1
redis.call('SET', KEYS[5], run)
redis.call('EXPIRE', KEYS[5], ARGV[7])
local entry = redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[1], 'payload', ARGV[2], 'run', run)
local data = cjson.decode(ARGV[5])
data.run = run
data.webhook_entry = entry
local ev = redis.call('XADD', KEYS[2], '*', 'type', 'task.reprocess_requested', 'task_id', ARGV[1], 'at', ARGV[3], 'data', cjson.encode(data))
redis.call('RPUSH', KEYS[3], ev)
redis.call('EXPIRE', KEYS[3], ARGV[7])
return run
`,
);
