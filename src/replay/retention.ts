import type { RedisClient } from "../redis/client.ts";
import { readRegistry } from "../consumer_registry.ts";
import { compareIds, idTime } from "../events.ts";
import type { Keys } from "../keys.ts";
import type { Logger } from "../log.ts";
import { Lease } from "../redis/lease.ts";
import { type GroupInfo, groupInfo } from "../redis/streams.ts";

/**
 * When retention stops waiting for a group: it is one of `abandonable` (the group of an optional
 * kind, such as callbacks, that no process of the deployment has ever reported running) and the
 * oldest entry it holds back is older than `afterMs`. Such a group would otherwise keep the whole
 * stream for good; if a consumer comes later, it goes on from what is left. The task worker, the
 * scene sink and the projections are never let go of: work, scenes and views are not trimmed from
 * under a group that is merely down.
 */
export interface AbandonRule {
  abandonable: Set<string>;
  afterMs: number;
  nowMs: number;
}

/** The first entry a group still needs: its oldest pending one, or the first it has not read. */
async function heldBack(
  redis: RedisClient,
  stream: string,
  group: GroupInfo,
): Promise<string | null> {
  let oldest: string | null = null;
  const keep = (id: string) => {
    if (oldest === null || compareIds(id, oldest) < 0) oldest = id;
  };
  if (group.pending > 0) {
    const summary = await redis.xpending(stream, group.name) as [number, string | null];
    if (summary[1]) keep(summary[1]);
  }
  if (group.lag === null || group.lag > 0) {
    // Unread entries follow the last delivered id: keep from the first of them (its id also
    // says how long it has waited).
    const [next] = await redis.xrange(stream, `(${group.last_delivered_id}`, "+", "COUNT", 1);
    if (next) keep(next[0]);
  }
  return oldest;
}

/**
 * The oldest entry id that must stay in a stream: for every consumer group, the first entry it
 * has not read yet or still has pending. Null when no group has anything outstanding. With
 * `abandon`, groups it calls abandoned are not waited for; their names go into `abandoned`.
 */
export async function oldestNeeded(
  redis: RedisClient,
  stream: string,
  options: { abandon?: AbandonRule; abandoned?: string[] } = {},
): Promise<string | null> {
  const { abandon } = options;
  let oldest: string | null = null;
  for (const group of await groupInfo(redis, stream)) {
    const needed = await heldBack(redis, stream, group);
    if (needed === null) continue;
    if (
      abandon && abandon.abandonable.has(group.name) &&
      abandon.nowMs - idTime(needed) > abandon.afterMs
    ) {
      options.abandoned?.push(group.name);
      continue;
    }
    if (oldest === null || compareIds(needed, oldest) < 0) oldest = needed;
  }
  return oldest;
}

/**
 * Trims a stream to entries newer than `retentionMs`, but never past an entry some consumer
 * group has not read or still has pending (unless `abandon` lets it go of that group). Returns
 * the number of entries removed.
 */
export async function trimStream(
  redis: RedisClient,
  stream: string,
  retentionMs: number,
  nowMs: number,
  options: { abandon?: AbandonRule; abandoned?: string[] } = {},
) {
  let minId = `${Math.max(0, nowMs - retentionMs)}-0`;
  const needed = await oldestNeeded(redis, stream, options);
  if (needed && compareIds(needed, minId) < 0) minId = needed;
  return await redis.xtrim(stream, "MINID", minId);
}

/** An optional consumer kind (its effects may be skipped) and its group. */
export interface OptionalGroup {
  kind: string;
  group: string;
}

/**
 * Trims the webhook and event streams; dead letters stay until redriven or removed. With
 * `abandonAfterMs`, the group of an `optional` kind that no process has ever reported running (the
 * consumer registry has no entry for it) no longer holds them back once its oldest needed entry is
 * that old (AbandonRule); `abandoned` names those groups.
 */
export async function applyRetention(
  redis: RedisClient,
  keys: Keys,
  retentionMs: number,
  nowMs: number,
  options: { abandonAfterMs?: number; optional?: OptionalGroup[] } = {},
) {
  let abandon: AbandonRule | undefined;
  if (options.abandonAfterMs !== undefined) {
    const registry = await readRegistry(redis, keys);
    const abandonable = new Set(
      (options.optional ?? []).filter(({ kind }) => !registry.has(kind)).map(({ group }) => group),
    );
    abandon = { abandonable, afterMs: options.abandonAfterMs, nowMs };
  }
  const abandoned: string[] = [];
  return {
    webhooks: await trimStream(redis, keys.webhookStream, retentionMs, nowMs, {
      abandon,
      abandoned,
    }),
    events: await trimStream(redis, keys.eventStream, retentionMs, nowMs, { abandon, abandoned }),
    abandoned,
  };
}

/** The replay horizon: the oldest event still in the log, and the configured retention. */
export async function replayHorizon(redis: RedisClient, keys: Keys, retentionMs: number) {
  const [first] = await redis.xrange(keys.eventStream, "-", "+", "COUNT", 1);
  return {
    stream_retention_s: Math.round(retentionMs / 1000),
    oldest_event_at: first ? new Date(idTime(first[0])).toISOString() : null,
  };
}

/**
 * Trims the streams once every `intervalMs` across all processes running it: a round is due when
 * the retention lease has run out, and whoever looks first then takes it and trims. Every process
 * looks ten times per interval (at most every 5 s), so a round starts at most a tenth of the
 * interval late and none is skipped (a lease lasting exactly the interval, looked at once per
 * interval, was often still held when looked at: every other round was lost). Returns a stop
 * function.
 */
export function startRetention(options: {
  redis: RedisClient;
  /** The partitions' keys: each partition is trimmed under its own lease. */
  keys: Keys | readonly Keys[];
  retentionMs: number;
  intervalMs: number;
  owner: string;
  onError: (error: unknown) => void;
  /** Stop waiting for an optional kind's group nobody runs after this long (see AbandonRule). */
  abandonAfterMs?: number;
  /** The optional kinds and their groups (the callback sender's). */
  optional?: OptionalGroup[];
  /** Says when retention stops (or resumes) waiting for a group. */
  log?: Logger;
  /** Called after each round this process ran (tests). */
  onRound?: (result: Awaited<ReturnType<typeof applyRetention>>) => void;
}): () => void {
  const { redis, intervalMs } = options;
  const all = Array.isArray(options.keys)
    ? options.keys as readonly Keys[]
    : [options.keys as Keys];
  const tickMs = Math.max(1, Math.min(5_000, Math.floor(intervalMs / 10)));
  // Held for the round and never released: it runs out half a look before the round is due, so
  // the look that finds the round due also finds the lease free.
  const partitions = all.map((keys) => ({
    keys,
    lease: new Lease(redis, keys.retentionLease, options.owner, intervalMs - tickMs / 2),
    abandoned: new Set<string>(),
  }));
  const named = (keys: Keys) => all.length === 1 ? {} : { partition: keys.partition };
  const round = async (partition: (typeof partitions)[number]) => {
    const { keys, lease } = partition;
    if (!await lease.acquire()) return;
    const result = await applyRetention(redis, keys, options.retentionMs, Date.now(), {
      abandonAfterMs: options.abandonAfterMs,
      optional: options.optional,
    });
    const now = new Set(result.abandoned);
    for (const group of now) {
      if (partition.abandoned.has(group)) continue;
      options.log?.warn("Retention no longer waits for a consumer group nobody runs", {
        group,
        ...named(keys),
        detail: "no process of this deployment runs it (CONSUMERS); entries older than the " +
          "retention go, read or not",
      });
    }
    for (const group of partition.abandoned) {
      if (!now.has(group)) {
        options.log?.info("Retention waits for a consumer group again", {
          group,
          ...named(keys),
        });
      }
    }
    partition.abandoned = now;
    options.onRound?.(result);
  };
  let running = false;
  const timer = setInterval(async () => {
    if (running) return;
    running = true;
    try {
      // Each partition on its own: one whose master is unreachable does not hold the others back.
      for (const partition of partitions) {
        try {
          await round(partition);
        } catch (error) {
          options.onError(error);
        }
      }
    } finally {
      running = false;
    }
  }, tickMs);
  return () => clearInterval(timer);
}
