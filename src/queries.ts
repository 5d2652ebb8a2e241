import type { Redis } from "ioredis";
import { z } from "zod";
import type { Keys, ViewSpace } from "./keys.ts";
import { idTime } from "./events.ts";
import { groupInfo } from "./redis/streams.ts";

/** One consumer group with its backlog, as /stats and /health report it. */
export const GroupStatsSchema = z.object({
  stream: z.string(),
  group: z.string(),
  stream_length: z.number().int(),
  pending: z.number().int(),
  lag: z.number().int().nullable(),
  consumers: z.number().int(),
});
export type GroupStats = z.infer<typeof GroupStatsSchema>;

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

/** The view prefix of the generation readers use; each projection's query builds its keys on it. */
export async function currentViews(redis: Redis, keys: Keys): Promise<ViewSpace> {
  return keys.views(await viewGeneration(redis, keys));
}

/**
 * How long (seconds) a group's oldest pending entry has waited, from its id's time to `nowMs`; 0
 * when nothing is pending. /metrics (`stream_group_oldest_pending_age_seconds`) and the dashboard
 * read it from here.
 */
export async function oldestPendingAgeS(
  redis: Redis,
  stream: string,
  group: string,
  nowMs: number,
): Promise<number> {
  const [, first] = await redis.xpending(stream, group) as [number, string | null];
  return first ? Math.max(0, nowMs - idTime(first)) / 1000 : 0;
}
