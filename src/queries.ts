import type { RedisClient } from "./redis/client.ts";
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
  partition: z.number().int().optional().describe("With PARTITIONS > 1: the stream's partition"),
});
export type GroupStats = z.infer<typeof GroupStatsSchema>;

/**
 * Every consumer group on the webhook and event streams of each partition, with its backlog
 * (labelled with its partition when there are several).
 */
export async function consumerGroups(
  redis: RedisClient,
  keys: Keys | readonly Keys[],
): Promise<GroupStats[]> {
  const all = Array.isArray(keys) ? keys as readonly Keys[] : [keys as Keys];
  const lists = await Promise.all(all.map((k) => partitionGroups(redis, k)));
  return all.length === 1
    ? lists[0]
    : lists.flatMap((groups, i) => groups.map((g) => ({ ...g, partition: all[i].partition })));
}

async function partitionGroups(redis: RedisClient, keys: Keys): Promise<GroupStats[]> {
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
export async function viewGeneration(redis: RedisClient, keys: Keys): Promise<number> {
  return Number(await redis.get(keys.viewGeneration) ?? 0);
}

/** The view prefix of the generation readers use; each projection's query builds its keys on it. */
export async function currentViews(redis: RedisClient, keys: Keys): Promise<ViewSpace> {
  return keys.views(await viewGeneration(redis, keys));
}

/**
 * How long (seconds) a group's oldest pending entry has waited, from its id's time to `nowMs`; 0
 * when nothing is pending. /metrics (`stream_group_oldest_pending_age_seconds`) and the dashboard
 * read it from here.
 */
export async function oldestPendingAgeS(
  redis: RedisClient,
  stream: string,
  group: string,
  nowMs: number,
): Promise<number> {
  const [, first] = await redis.xpending(stream, group) as [number, string | null];
  return first ? Math.max(0, nowMs - idTime(first)) / 1000 : 0;
}
