import type { Redis } from "ioredis";
import { compareIds } from "../events.ts";
import type { Keys } from "../keys.ts";
import { Lease } from "../redis/lease.ts";
import { groupInfo } from "../redis/streams.ts";

/**
 * The oldest entry id that must stay in a stream: for every consumer group, the first entry it
 * has not read yet or still has pending. Null when no group has anything outstanding.
 */
export async function oldestNeeded(redis: Redis, stream: string): Promise<string | null> {
  let oldest: string | null = null;
  const keep = (id: string) => {
    if (oldest === null || compareIds(id, oldest) < 0) oldest = id;
  };
  for (const group of await groupInfo(redis, stream)) {
    if (group.pending > 0) {
      const summary = await redis.xpending(stream, group.name) as [number, string | null];
      if (summary[1]) keep(summary[1]);
    }
    if (group.lag === null || group.lag > 0) {
      // Unread entries follow the last delivered id; keep from the one just after it.
      const [ms, seq] = group.last_delivered_id.split("-").map(Number);
      keep(`${ms}-${seq + 1}`);
    }
  }
  return oldest;
}

/**
 * Trims a stream to entries newer than `retentionMs`, but never past an entry some consumer
 * group has not read or still has pending. Returns the number of entries removed.
 */
export async function trimStream(redis: Redis, stream: string, retentionMs: number, nowMs: number) {
  let minId = `${Math.max(0, nowMs - retentionMs)}-0`;
  const needed = await oldestNeeded(redis, stream);
  if (needed && compareIds(needed, minId) < 0) minId = needed;
  return await redis.xtrim(stream, "MINID", minId);
}

/** Trims the webhook and event streams; dead letters stay until redriven or removed. */
export async function applyRetention(redis: Redis, keys: Keys, retentionMs: number, nowMs: number) {
  return {
    webhooks: await trimStream(redis, keys.webhookStream, retentionMs, nowMs),
    events: await trimStream(redis, keys.eventStream, retentionMs, nowMs),
  };
}

/** The replay horizon: the oldest event still in the log, and the configured retention. */
export async function replayHorizon(redis: Redis, keys: Keys, retentionMs: number) {
  const [first] = await redis.xrange(keys.eventStream, "-", "+", "COUNT", 1);
  return {
    stream_retention_s: Math.round(retentionMs / 1000),
    oldest_event_at: first ? new Date(Number(first[0].split("-")[0])).toISOString() : null,
  };
}

/**
 * Trims the streams every `intervalMs` from one process at a time (a lease per round); returns a
 * stop function.
 */
export function startRetention(options: {
  redis: Redis;
  keys: Keys;
  retentionMs: number;
  intervalMs: number;
  owner: string;
  onError: (error: unknown) => void;
}): () => void {
  const { redis, keys } = options;
  // Held for a whole round and never released: the next round's holder takes it once it expires.
  const lease = new Lease(redis, keys.retentionLease, options.owner, options.intervalMs);
  const timer = setInterval(async () => {
    try {
      if (await lease.acquire()) {
        await applyRetention(redis, keys, options.retentionMs, Date.now());
      }
    } catch (error) {
      options.onError(error);
    }
  }, options.intervalMs);
  return () => clearInterval(timer);
}
