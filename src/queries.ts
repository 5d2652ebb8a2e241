import type { Redis } from "ioredis";
import { STEP_NAMES } from "./events.ts";
import type { Keys } from "./keys.ts";
import type { TaskView } from "./projections/task_view.ts";
import type { VideoView } from "./projections/video_view.ts";
import { groupInfo } from "./redis/streams.ts";
import { replayHorizon } from "./replay/retention.ts";

export interface GroupStats {
  stream: string;
  group: string;
  stream_length: number;
  pending: number;
  lag: number | null;
  consumers: number;
}

/** Every consumer group on the webhook and event streams, with its backlog. */
export async function consumerGroups(redis: Redis, keys: Keys): Promise<GroupStats[]> {
  const streams = [
    { name: "webhooks", key: keys.webhookStream },
    { name: "events", key: keys.eventStream },
  ];
  const out: GroupStats[] = [];
  for (const stream of streams) {
    const [length, groups] = await Promise.all([
      redis.xlen(stream.key),
      groupInfo(redis, stream.key),
    ]);
    for (const g of groups) {
      out.push({
        stream: stream.name,
        group: g.name,
        stream_length: length,
        pending: g.pending,
        lag: g.lag,
        consumers: g.consumers,
      });
    }
  }
  return out;
}

/** The generation of views readers use (0 until a projection rebuild was swapped in). */
export async function viewGeneration(redis: Redis, keys: Keys): Promise<number> {
  return Number(await redis.get(keys.viewGeneration) ?? 0);
}

/** The current generation's view keys. */
export async function currentViews(redis: Redis, keys: Keys) {
  return keys.views(await viewGeneration(redis, keys));
}

export async function readTaskView(redis: Redis, keys: Keys, taskId: string) {
  const raw = await redis.get((await currentViews(redis, keys)).taskView(taskId));
  return raw ? JSON.parse(raw) as TaskView : null;
}

export async function readVideoView(redis: Redis, keys: Keys, videoId: string) {
  const raw = await redis.get((await currentViews(redis, keys)).videoView(videoId));
  return raw ? JSON.parse(raw) as VideoView : null;
}

async function percentile(redis: Redis, key: string, count: number, q: number) {
  if (count === 0) return 0;
  const rank = Math.min(count - 1, Math.ceil(q * count) - 1);
  const [, score] = await redis.zrange(key, rank, rank, "WITHSCORES");
  return Number(score ?? 0);
}

/** The stats view plus live figures from the streams. `now` bounds the throughput window. */
export async function readStats(redis: Redis, keys: Keys, now: number, retentionMs: number) {
  const views = await currentViews(redis, keys);
  const [hash, durations, finished] = await Promise.all([
    redis.hgetall(views.stats),
    redis.zcard(views.statsDurations),
    redis.zcount(views.statsFinished, now - 60_000, now),
  ]);
  const n = (field: string) => Number(hash[field] ?? 0);
  const [p50, p95, groups, horizon] = await Promise.all([
    percentile(redis, views.statsDurations, durations, 0.5),
    percentile(redis, views.statsDurations, durations, 0.95),
    consumerGroups(redis, keys),
    replayHorizon(redis, keys, retentionMs),
  ]);
  const average = n("processing_count") ? n("processing_ms") / n("processing_count") : 0;
  const stepAverage: Record<string, number> = {};
  for (const step of STEP_NAMES) {
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
