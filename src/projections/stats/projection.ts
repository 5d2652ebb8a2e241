import type { Redis } from "ioredis";
import { z } from "zod";
import { StepName, type StoredEvent } from "../../events.ts";
import type { Keys } from "../../keys.ts";
import { consumerGroups, currentViews, GroupStatsSchema } from "../../queries.ts";
import { replayHorizon } from "../../replay/retention.ts";
import { defineProjection, type Op, type PlanContext } from "../definition.ts";
import type { TaskStatus } from "../task_view/view.ts";
import { evolveStats, initialStats, STATS_EVENTS, statsChange, statsKeys } from "./view.ts";

/** GET /stats: the stats view plus live figures from the streams. */
export const StatsSchema = z.object({
  total_requests: z.number().int(),
  queued_tasks: z.number().int(),
  processing_tasks: z.number().int(),
  completed_tasks: z.number().int(),
  failed_tasks: z.number().int(),
  dead_lettered_tasks: z.number().int(),
  average_processing_time: z.number().describe("Seconds, over completed tasks"),
  processing_time_ms: z.object({ average: z.number(), p50: z.number(), p95: z.number() }),
  step_average_ms: z.record(z.string(), z.number()),
  callbacks: z.object({ delivered: z.number().int(), failed: z.number().int() }),
  throughput_last_minute: z.object({
    finished: z.number().int(),
    per_second: z.number(),
  }),
  consumer_groups: z.array(GroupStatsSchema),
  replay_horizon: z.object({
    stream_retention_s: z.number().int(),
    oldest_event_at: z.string().nullable(),
  }).describe("Tasks older than the oldest event cannot be reprocessed or rebuilt from the log"),
});
export type Stats = z.infer<typeof StatsSchema>;

async function percentile(redis: Redis, key: string, count: number, q: number) {
  if (count === 0) return 0;
  const rank = Math.min(count - 1, Math.ceil(q * count) - 1);
  const [, score] = await redis.zrange(key, rank, rank, "WITHSCORES");
  return Number(score ?? 0);
}

/** The stats view plus live figures from the streams. `now` bounds the throughput window. */
export async function readStats(
  redis: Redis,
  keys: Keys,
  now: number,
  retentionMs: number,
): Promise<Stats> {
  const stats = statsKeys((await currentViews(redis, keys)).prefix);
  const [hash, durations, finished] = await Promise.all([
    redis.hgetall(stats.counters),
    redis.zcard(stats.durations),
    redis.zcount(stats.finished, now - 60_000, now),
  ]);
  const n = (field: string) => Number(hash[field] ?? 0);
  const [p50, p95, groups, horizon] = await Promise.all([
    percentile(redis, stats.durations, durations, 0.5),
    percentile(redis, stats.durations, durations, 0.95),
    consumerGroups(redis, keys),
    replayHorizon(redis, keys, retentionMs),
  ]);
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
    processing_time_ms: { average: Math.round(average), p50, p95 },
    step_average_ms: stepAverage,
    callbacks: { delivered: n("callbacks_delivered"), failed: n("callbacks_failed") },
    throughput_last_minute: { finished, per_second: Math.round((finished / 60) * 100) / 100 },
    consumer_groups: groups,
    replay_horizon: horizon,
  };
}

/**
 * The batch's stats writes: counter increments, the statuses that moved, durations and finish
 * times. Reads only the statuses of the batch's tasks, never the counters.
 */
async function planStats({ redis, prefix }: PlanContext, events: StoredEvent[]): Promise<Op[]> {
  const keys = statsKeys(prefix);
  const taskIds = [...new Set(events.map((e) => e.task_id))];
  if (taskIds.length === 0) return [];
  const known = await redis.hmget(keys.status, ...taskIds);
  const status = new Map<string, TaskStatus>();
  taskIds.forEach((id, i) => known[i] && status.set(id, known[i] as TaskStatus));
  const counters: Record<string, number> = {};
  const changed = new Set<string>();
  const ops: Op[] = [];
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
      ops.push(["ZADD", keys.durations, change.processingMs, event.task_id]);
    }
    if (change.finishedAt !== undefined) {
      ops.push(["ZADD", keys.finished, change.finishedAt, event.task_id]);
    }
  }
  // Zero nets are written too, so a field exists iff some event touched it, whatever the batch
  // boundaries: a rebuild then gives the very same hash.
  for (const [field, n] of Object.entries(counters)) ops.push(["HINCRBY", keys.counters, field, n]);
  const statusPairs = [...changed].flatMap((id) => [id, status.get(id)!]);
  if (statusPairs.length) ops.push(["HSET", keys.status, ...statusPairs]);
  return ops;
}

/** Counters, durations and throughput over all tasks. */
export const stats = defineProjection({
  name: "stats",
  handles: STATS_EVENTS,
  initialState: initialStats,
  evolve: evolveStats,
  ownedKeys: (prefix) => Object.values(statsKeys(prefix)),
  plan: planStats,
  route: {
    path: "/stats",
    summary: "Task counts, processing times, throughput and consumer-group backlog",
    response: { schema: StatsSchema, description: "Statistics" },
    problems: { 503: "Redis is unreachable" },
    handle: ({ redis, keys, now, streamRetentionMs }) =>
      readStats(redis, keys, now().getTime(), streamRetentionMs),
  },
});
