import type { RedisClient } from "../../redis/client.ts";
import { z } from "zod";
import { StepName, type StoredEvent } from "../../events.ts";
import type { Keys } from "../../keys.ts";
import { consumerGroups, currentViews, GroupStatsSchema } from "../../queries.ts";
import { replayHorizon } from "../../replay/retention.ts";
import { defineProjection, type Op, type PlanContext } from "../definition.ts";
import type { TaskStatus } from "../task_view/view.ts";
import {
  durationBucket,
  evolveStats,
  FINISHED_WINDOW_S,
  finishMinute,
  finishSecond,
  histogramPercentile,
  initialStats,
  legacyStatsKeys,
  MINUTE_WINDOW,
  minuteFields,
  STATS_EVENTS,
  statsChange,
  statsKeys,
  statsStatusKey,
} from "./view.ts";

/** One minute of the last hour's series. */
export const MinuteSchema = z.object({
  minute: z.string().describe("Start of the minute (ISO-8601)"),
  finished: z.number().int().describe("Tasks completed or failed for good in it"),
  completed: z.number().int(),
  failed: z.number().int(),
  p50_ms: z.number().nullable().describe("Processing time of its completions; null without any"),
  p95_ms: z.number().nullable(),
});
export type MinuteStats = z.infer<typeof MinuteSchema>;

/** The last hour, per minute (event times), for the dashboard's charts. */
export const LastHourSchema = z.object({
  minutes: z.array(MinuteSchema).describe(
    "The 60 whole minutes up to and including the current one, oldest first",
  ),
  finished: z.number().int(),
  processing_time_ms: z.object({ p50: z.number().nullable(), p95: z.number().nullable() })
    .describe("Over the hour's completions, from the same histogram buckets as processing_time_ms"),
});
export type LastHour = z.infer<typeof LastHourSchema>;

/**
 * The last hour per minute: throughput and processing time p50/p95 of the 60 minutes up to and
 * including `now`'s (minutes without finishes are zeros), from the stats view's per-minute
 * hashes; `viewPrefix` is the current generation's (currentViews).
 */
export async function readLastHour(
  redis: RedisClient,
  viewPrefix: string | readonly string[],
  now: number,
): Promise<LastHour> {
  const prefixes = typeof viewPrefix === "string" ? [viewPrefix] : viewPrefix;
  const last = finishMinute(now);
  const minutes = Array.from({ length: 60 }, (_, i) => last - 59 + i);
  // Each partition's minutes (one pipeline per partition: one slot each), summed field by field.
  const perPartition = await Promise.all(prefixes.map(async (prefix) => {
    const keys = statsKeys(prefix);
    const pipeline = redis.pipeline();
    for (const minute of minutes) pipeline.hgetall(keys.minute(minute));
    return (await pipeline.exec()) ?? [];
  }));
  const hour: Record<string, number> = {};
  const series = minutes.map((minute, i): MinuteStats => {
    const fields: Record<string, number> = {};
    for (const replies of perPartition) {
      const [error, raw] = replies[i];
      if (error) throw error;
      for (const [field, n] of Object.entries(raw as Record<string, string>)) {
        fields[field] = (fields[field] ?? 0) + Number(n);
      }
    }
    const histogram: Record<string, number> = {};
    for (const [field, n] of Object.entries(fields)) {
      if (!field.startsWith("ms:")) continue;
      histogram[field.slice(3)] = Number(n);
      hour[field.slice(3)] = (hour[field.slice(3)] ?? 0) + Number(n);
    }
    const completed = Number(fields.completed ?? 0);
    const failed = Number(fields.failed ?? 0);
    return {
      minute: new Date(minute * 60_000).toISOString(),
      finished: completed + failed,
      completed,
      failed,
      p50_ms: completed ? histogramPercentile(histogram, 0.5) : null,
      p95_ms: completed ? histogramPercentile(histogram, 0.95) : null,
    };
  });
  const any = Object.keys(hour).length > 0;
  return {
    minutes: series,
    finished: series.reduce((sum, m) => sum + m.finished, 0),
    processing_time_ms: {
      p50: any ? histogramPercentile(hour, 0.5) : null,
      p95: any ? histogramPercentile(hour, 0.95) : null,
    },
  };
}

/** GET /stats: the stats view plus live figures from the streams. */
export const StatsSchema = z.object({
  total_requests: z.number().int(),
  queued_tasks: z.number().int(),
  processing_tasks: z.number().int(),
  completed_tasks: z.number().int(),
  failed_tasks: z.number().int(),
  dead_lettered_tasks: z.number().int(),
  average_processing_time: z.number().describe("Seconds, over completed tasks"),
  processing_time_ms: z.object({
    average: z.number(),
    p50: z.number(),
    p95: z.number(),
  }).describe(
    "Over every completion; p50 and p95 come from a histogram of fixed buckets: exact below " +
      "100 ms, else the middle of the bucket of values with the same two leading digits (within 5 %)",
  ),
  step_average_ms: z.record(z.string(), z.number()),
  callbacks: z.object({ delivered: z.number().int(), failed: z.number().int() }),
  throughput_last_minute: z.object({
    finished: z.number().int(),
    per_second: z.number(),
  }).describe("Tasks completed or failed for good in the last 60 whole seconds (event times)"),
  last_hour: LastHourSchema,
  consumer_groups: z.array(GroupStatsSchema),
  replay_horizon: z.object({
    stream_retention_s: z.number().int(),
    oldest_event_at: z.string().nullable(),
  }).describe("Tasks older than the oldest event cannot be reprocessed or rebuilt from the log"),
});
export type Stats = z.infer<typeof StatsSchema>;

/** The seconds of the throughput window: the 60 whole seconds up to and including `now`'s. */
function lastMinute(nowMs: number): string[] {
  const nowS = finishSecond(nowMs);
  return Array.from({ length: 60 }, (_, i) => String(nowS - i));
}

/**
 * The stats view plus live figures from the streams, summed over the partitions: counters and
 * throughput add up, percentiles come from the merged histogram buckets. `now` bounds the
 * throughput window.
 */
export async function readStats(
  redis: RedisClient,
  keys: Keys | readonly Keys[],
  now: number,
  retentionMs: number,
): Promise<Stats> {
  const all = Array.isArray(keys) ? keys as readonly Keys[] : [keys as Keys];
  const prefixes = await Promise.all(all.map(async (k) => (await currentViews(redis, k)).prefix));
  const parts = await Promise.all(all.map(async (k, i) => {
    const stats = statsKeys(prefixes[i]);
    return await Promise.all([
      redis.hgetall(stats.counters),
      redis.hgetall(stats.durations),
      redis.hmget(stats.finished, ...lastMinute(now)),
      replayHorizon(redis, k, retentionMs),
    ]);
  }));
  const [groups, lastHour] = await Promise.all([
    consumerGroups(redis, all),
    readLastHour(redis, prefixes, now),
  ]);
  const hash: Record<string, number> = {};
  const buckets: Record<string, number> = {};
  const add = (into: Record<string, number>, from: Record<string, string>) => {
    for (const [field, value] of Object.entries(from)) {
      into[field] = (into[field] ?? 0) + Number(value);
    }
  };
  let finished = 0;
  const oldest: string[] = [];
  for (const [counters, histogram, perSecond, partHorizon] of parts) {
    add(hash, counters);
    add(buckets, histogram);
    finished += perSecond.reduce((sum, count) => sum + Number(count ?? 0), 0);
    if (partHorizon.oldest_event_at) oldest.push(partHorizon.oldest_event_at);
  }
  const horizon = {
    stream_retention_s: Math.round(retentionMs / 1000),
    // ISO times of one format sort as text.
    oldest_event_at: oldest.sort()[0] ?? null,
  };
  const n = (field: string) => Number(hash[field] ?? 0);
  const average = n("processing_count") ? n("processing_ms") / n("processing_count") : 0;
  const stepAverage: Record<string, number> = {};
  for (const step of StepName.options) {
    const count = n(`step:${step}:count`);
    if (count) stepAverage[step] = Math.round((n(`step:${step}:ms`) / count) * 100) / 100;
  }
  return {
    total_requests: n("total_requests"),
    queued_tasks: n("queued_tasks"),
    processing_tasks: n("processing_tasks"),
    completed_tasks: n("completed_tasks"),
    failed_tasks: n("failed_tasks"),
    dead_lettered_tasks: n("dead_lettered_tasks"),
    average_processing_time: Math.round(average) / 1000,
    processing_time_ms: {
      average: Math.round(average),
      p50: histogramPercentile(buckets, 0.5),
      p95: histogramPercentile(buckets, 0.95),
    },
    step_average_ms: stepAverage,
    callbacks: { delivered: n("callbacks_delivered"), failed: n("callbacks_failed") },
    throughput_last_minute: { finished, per_second: Math.round((finished / 60) * 100) / 100 },
    last_hour: lastHour,
    consumer_groups: groups,
    replay_horizon: horizon,
  };
}

const finishes = (e: StoredEvent) =>
  e.type === "task.completed" || (e.type === "task.failed" && e.data.final);

/**
 * The batch's stats writes: counter increments, the statuses that moved (one key per task, with
 * the view TTL), histogram increments and the throughput window's seconds, trimmed. Reads only
 * the statuses of the batch's tasks and, when tasks finished, the window's seconds (at most
 * FINISHED_WINDOW_S + 1 fields), never the counters.
 */
async function planStats(
  { redis, prefix, viewTtlS }: PlanContext,
  events: StoredEvent[],
): Promise<Op[]> {
  const keys = statsKeys(prefix);
  const taskIds = [...new Set(events.map((e) => e.task_id))];
  if (taskIds.length === 0) return [];
  const finishing = events.some(finishes);
  const [known, windowSeconds, windowMinutes] = await Promise.all([
    redis.mget(...taskIds.map((id) => statsStatusKey(prefix, id))),
    finishing ? redis.hkeys(keys.finished) : Promise.resolve([]),
    finishing ? redis.hkeys(keys.minutes) : Promise.resolve([]),
  ]);
  const status = new Map<string, TaskStatus>();
  taskIds.forEach((id, i) => known[i] && status.set(id, known[i] as TaskStatus));
  const counters: Record<string, number> = {};
  const buckets: Record<string, number> = {};
  const seconds: Record<string, number> = {};
  const minutes: Record<string, Record<string, number>> = {};
  const changed = new Set<string>();
  for (const event of events) {
    const change = statsChange(status.get(event.task_id), event);
    for (const [field, n] of Object.entries(change.counters)) {
      counters[field] = (counters[field] ?? 0) + n;
    }
    if (change.status) {
      status.set(event.task_id, change.status);
      changed.add(event.task_id);
    }
    if (change.processingMs !== undefined) {
      const bucket = durationBucket(change.processingMs);
      buckets[bucket] = (buckets[bucket] ?? 0) + 1;
    }
    if (change.finishedAt !== undefined) {
      const second = finishSecond(change.finishedAt);
      seconds[second] = (seconds[second] ?? 0) + 1;
      const fields = minutes[finishMinute(change.finishedAt)] ??= {};
      for (const [field, n] of Object.entries(minuteFields(change))) {
        fields[field] = (fields[field] ?? 0) + n;
      }
    }
  }
  const ops: Op[] = [];
  // Zero nets are written too, so a field exists iff some event touched it, whatever the batch
  // boundaries: a rebuild then gives the very same hash.
  for (const [field, n] of Object.entries(counters)) ops.push(["HINCRBY", keys.counters, field, n]);
  for (const id of changed) {
    ops.push(["SET", statsStatusKey(prefix, id), status.get(id)!, "EX", viewTtlS]);
  }
  for (const [bucket, n] of Object.entries(buckets)) {
    ops.push(["HINCRBY", keys.durations, bucket, n]);
  }
  // The window keeps the FINISHED_WINDOW_S seconds before the newest finish second (event times):
  // seconds below that are not added, and the stored ones that fall below it are dropped.
  const all = [...windowSeconds, ...Object.keys(seconds)].map(Number);
  if (Object.keys(seconds).length) {
    const floor = Math.max(...all) - FINISHED_WINDOW_S;
    for (const [second, n] of Object.entries(seconds)) {
      if (Number(second) >= floor) ops.push(["HINCRBY", keys.finished, second, n]);
    }
    const stale = windowSeconds.filter((s) => Number(s) < floor);
    if (stale.length) ops.push(["HDEL", keys.finished, ...stale]);
  }
  ops.push(...minuteWrites(keys, windowMinutes, minutes));
  return ops;
}

/**
 * The per-minute series' writes, trimmed like the throughput window: the MINUTE_WINDOW minutes
 * before the newest finish minute (event times) are kept, older ones dropped with their hash.
 */
function minuteWrites(
  keys: ReturnType<typeof statsKeys>,
  stored: string[],
  minutes: Record<string, Record<string, number>>,
): Op[] {
  const added = Object.keys(minutes);
  if (added.length === 0) return [];
  const floor = Math.max(...[...stored, ...added].map(Number)) - MINUTE_WINDOW;
  const ops: Op[] = [];
  for (const [minute, fields] of Object.entries(minutes)) {
    if (Number(minute) < floor) continue;
    const finished = (fields.completed ?? 0) + (fields.failed ?? 0);
    ops.push(["HINCRBY", keys.minutes, minute, finished]);
    for (const [field, n] of Object.entries(fields)) {
      ops.push(["HINCRBY", keys.minute(minute), field, n]);
    }
  }
  const stale = stored.filter((m) => Number(m) < floor);
  if (stale.length) {
    ops.push(["HDEL", keys.minutes, ...stale]);
    for (const minute of stale) ops.push(["DEL", keys.minute(minute)]);
  }
  return ops;
}

/** Counters, durations and throughput over all tasks. */
export const stats = defineProjection({
  name: "stats",
  handles: STATS_EVENTS,
  initialState: initialStats,
  evolve: evolveStats,
  ownedKeys: (prefix) => {
    const { counters, statusPrefix, durations, finished, minutes, minutePattern } = statsKeys(
      prefix,
    );
    return [
      counters,
      `${statusPrefix}*`,
      durations,
      finished,
      minutes,
      minutePattern,
      ...legacyStatsKeys(prefix),
    ];
  },
  plan: planStats,
  route: {
    path: "/stats",
    summary: "Task counts, processing times, throughput and consumer-group backlog",
    response: { schema: StatsSchema, description: "Statistics" },
    problems: { 503: "Redis is unreachable" },
    handle: ({ redis, partitions, now, streamRetentionMs }) =>
      readStats(redis, partitions.list.map((p) => p.keys), now().getTime(), streamRetentionMs),
  },
});
