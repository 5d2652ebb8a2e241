import {
  callWithKey,
  closeRedis,
  connectRedis,
  type RedisClient,
  type RedisTarget,
} from "../redis/client.ts";
import type { Keys } from "../keys.ts";
import type { Logger } from "../log.ts";
import { decodeValid } from "../events.ts";
import { applyWrites } from "./definition.ts";
import { viewGeneration } from "../queries.ts";
import { Lease } from "../redis/lease.ts";
import { ensureGroup, groupInfo, xgroup } from "../redis/streams.ts";
import { sleep } from "../sleep.ts";
import { deleteMatching, resetProjections } from "./projector.ts";
import { createProjections, type Projection } from "./registry.ts";
import { ProjectionRunner } from "./runner.ts";

// Here historically; they live with the projector, which also resets a projection by itself.
export { deleteMatching, resetProjections };

export interface RebuildOptions {
  redis: RedisClient;
  redisTarget: RedisTarget;
  keys: Keys;
  log: Logger;
  viewTtlS: number;
  owner: string;
  /** Called while catching up: events applied so far and the stream length. */
  onProgress?: (applied: number, total: number) => void;
  signal?: AbortSignal;
  /** Entries per read of the bulk fold (default 5,000). */
  bulkBatch?: number;
  /** Rebuild even though retention has trimmed the log (views of older tasks are then lost). */
  force?: boolean;
}

/** A rebuild that was not started: another one runs, or the log was trimmed and not forced. */
export class RebuildRefused extends Error {}

/** How many entries were ever added to the stream and how many remain (0, 0 without a stream). */
async function streamCounts(redis: RedisClient, stream: string) {
  const info = await callWithKey(redis, stream, "XINFO", "STREAM", stream)
    .catch(() => null) as unknown[] | null;
  if (!info) return { added: 0, length: 0 };
  const field = (name: string) => Number(info[info.indexOf(name) + 1] ?? 0);
  return { added: field("entries-added"), length: field("length") };
}

export interface RebuildResult {
  from_generation: number;
  generation: number;
  events: number;
  seconds: number;
  events_per_second: number;
}

/**
 * Folds the log, from its first entry to the last one there when it starts, straight into the
 * views of `projections`: one reader, each event decoded once for all of them, the writes of a
 * batch sent as one pipeline. Nobody reads these views before the swap and the next rebuild
 * deletes what an interrupted one left, so this needs neither leases nor per-batch checkpoints
 * (the consumer groups, which do, continue after it). Returns the last id folded ("0-0" for an
 * empty log).
 */
async function foldLog(
  redis: RedisClient,
  keys: Keys,
  projections: Projection[],
  log: Logger,
  { onProgress, signal, bulkBatch = 5_000 }: RebuildOptions,
): Promise<{ last: string; events: number }> {
  const [newest] = await redis.xrevrange(keys.eventStream, "+", "-", "COUNT", 1);
  const total = await redis.xlen(keys.eventStream);
  let last = "0-0";
  let read = 0;
  if (!newest) return { last, events: 0 };
  let start = "-";
  while (true) {
    signal?.throwIfAborted();
    const entries = await redis.xrange(keys.eventStream, start, newest[0], "COUNT", bulkBatch);
    if (entries.length === 0) break;
    const events = decodeValid(entries.map(([id, fields]) => ({ id, fields })), log);
    if (events.length) {
      const plans = await Promise.all(projections.map((p) => p.plan(events)));
      await applyWrites(redis, plans.flat());
    }
    last = entries[entries.length - 1][0];
    read += entries.length;
    onProgress?.(read, total);
    if (entries.length < bulkBatch) break;
    start = `(${last}`;
  }
  return { last, events: read };
}

/** How long the rebuild lock lasts unless renewed (it is, every third of it, while running). */
const LOCK_MS = 60_000;

/** Events the group has not yet applied: its lag plus what is read but not acknowledged. */
async function behind(redis: RedisClient, stream: string, groups: string[]) {
  const info = await groupInfo(redis, stream);
  let worst = 0;
  for (const name of groups) {
    const g = info.find((i) => i.name === name);
    if (!g) return Infinity;
    worst = Math.max(worst, (g.lag ?? Infinity) + g.pending);
  }
  return worst;
}

/**
 * Rebuilds every view from the task event stream without downtime: the next generation of views
 * is bulk-folded from the first event while the live views keep answering, then its consumer
 * groups take over from where the bulk fold stopped; once they have caught up (events arriving
 * meanwhile included) readers are switched to it with one SET, running workers' projectors follow
 * it, and the old generation is deleted.
 */
export async function rebuildProjections(options: RebuildOptions): Promise<RebuildResult> {
  const { redis, keys, log, owner } = options;
  if (!options.force) {
    const { added, length } = await streamCounts(redis, keys.eventStream);
    if (added > length) {
      throw new RebuildRefused(
        `Retention has trimmed the event log (${length} of ${added} events remain): rebuilt ` +
          "views would lose the tasks and videos whose events are gone, and statistics would " +
          "count only what remains. Rebuild anyway with --force (admin API: force: true).",
      );
    }
  }
  const lock = new Lease(redis, keys.rebuildLock, owner, LOCK_MS);
  if (!await lock.acquire()) {
    throw new RebuildRefused("Another projection rebuild is running");
  }
  const stopRenewing = lock.keepAlive();
  const connections: RedisClient[] = [];
  const t0 = performance.now();
  let next: Projection[] = [];
  let generation = -1;
  let swapped = false;
  try {
    const from = await viewGeneration(redis, keys);
    generation = from + 1;
    next = createProjections({ redis, keys, viewTtlS: options.viewTtlS, generation });
    // Leftovers of an interrupted rebuild of this generation.
    await deleteMatching(redis, keys.views(generation).viewPattern);
    await resetProjections(redis, keys, next);

    const runner = new ProjectionRunner({
      redis,
      keys,
      log,
      owner: options.owner,
      viewTtlS: options.viewTtlS,
      generation,
      batchSize: 2_000,
      blocking: (name) => {
        const connection = connectRedis(options.redisTarget, { name });
        connections.push(connection);
        return connection;
      },
    });
    // The groups exist (at the start of the log) while the bulk fold reads, so retention keeps
    // what is still to be folded; then they move to where the bulk fold stopped.
    const groups = next.map((p) => p.group);
    for (const group of groups) await ensureGroup(redis, keys.eventStream, group);
    // Entries the log had before its first one (trimmed): with those the bulk fold read, the
    // groups' entries read, so their XINFO lag counts what is left from the start.
    const { added, length } = await streamCounts(redis, keys.eventStream);
    const bulk = await foldLog(redis, keys, next, log, options);
    const read = String(added - length + bulk.events);
    for (const group of groups) {
      await xgroup(redis, "SETID", keys.eventStream, group, bulk.last, "ENTRIESREAD", read);
      await redis.set(keys.checkpoint(group), bulk.last);
    }
    // The consumer groups take over from there: what arrived during the bulk fold, and what
    // keeps arriving until the swap.
    await runner.start();
    let total = 0;
    try {
      while (true) {
        options.signal?.throwIfAborted();
        total = await redis.xlen(keys.eventStream);
        const left = await behind(redis, keys.eventStream, groups);
        options.onProgress?.(Math.max(0, total - left), total);
        if (left === 0) break;
        await sleep(50, options.signal);
      }
      // Caught up: switch readers in one step. Projectors of the old generation are fenced off
      // from here on; running workers pick up the new generation from its checkpoints.
      await redis.set(keys.viewGeneration, generation);
      swapped = true;
    } finally {
      await runner.stop();
    }
    const seconds = (performance.now() - t0) / 1000;
    log.info("Projections rebuilt", { generation, events: total });
    const old = createProjections({ redis, keys, viewTtlS: options.viewTtlS, generation: from });
    await resetProjections(redis, keys, old);
    await deleteMatching(redis, keys.views(from).viewPattern);
    return {
      from_generation: from,
      generation,
      events: total,
      seconds: Math.round(seconds * 1000) / 1000,
      events_per_second: Math.round(total / Math.max(seconds, 0.001)),
    };
  } finally {
    stopRenewing();
    await Promise.all(connections.map(closeRedis));
    // The swap may have been applied with its reply lost: then this generation is the live one.
    swapped ||= generation > 0 &&
      await viewGeneration(redis, keys).then((g) => g === generation, () => true);
    if (!swapped && generation > 0) {
      // Failed or aborted before the swap: drop the half-built generation, whose groups would
      // otherwise hold retention back for good.
      await resetProjections(redis, keys, next)
        .then(() => deleteMatching(redis, keys.views(generation).viewPattern))
        .catch((error) =>
          log.warn("Could not clean up an unfinished rebuild", {
            generation,
            error: String(error),
          })
        );
    }
    await lock.release();
  }
}

/** A rebuild over several partitions: the totals, and each partition's own result. */
export type PartitionedRebuildResult = RebuildResult & {
  partitions?: (RebuildResult & { partition: number })[];
};

/**
 * Rebuilds the views of each of `partitions` (one after the other, each as rebuildProjections
 * does, under its own lock). With one partition the result is that partition's; with more, the
 * events and seconds add up, the generations are the highest, and `partitions` lists each.
 */
export async function rebuildPartitions(
  options: Omit<RebuildOptions, "keys">,
  partitions: readonly Keys[],
): Promise<PartitionedRebuildResult> {
  const results: (RebuildResult & { partition: number })[] = [];
  // Progress over all of them: what the partitions done so far folded, plus the current one's,
  // of the events the ones still to come hold.
  const lengths = partitions.length === 1
    ? [0]
    : await Promise.all(partitions.map((k) => options.redis.xlen(k.eventStream)));
  let done = 0;
  if (!options.force && partitions.length > 1) {
    // Refused for all before any is rebuilt, rather than after some were swapped.
    const trimmed = [];
    for (const keys of partitions) {
      const { added, length } = await streamCounts(options.redis, keys.eventStream);
      if (added > length) trimmed.push(keys.partition);
    }
    if (trimmed.length) {
      throw new RebuildRefused(
        `Retention has trimmed the event log of partition(s) ${trimmed.join(", ")}: rebuilt ` +
          "views would lose the tasks and videos whose events are gone. Rebuild anyway with " +
          "--force (admin API: force: true), or one partition at a time (--partition N).",
      );
    }
  }
  for (const [i, keys] of partitions.entries()) {
    const log = partitions.length === 1
      ? options.log
      : options.log.child({ partition: keys.partition });
    const later = lengths.slice(i + 1).reduce((a, b) => a + b, 0);
    const onProgress = options.onProgress && partitions.length > 1
      ? (applied: number, total: number) =>
        options.onProgress!(done + applied, done + total + later)
      : options.onProgress;
    const result = await rebuildProjections({ ...options, keys, log, onProgress }).catch(
      (error) => {
        if (!results.length) throw error;
        // Say what was done before it stopped: those partitions' views are rebuilt and live.
        const rebuilt = results.map((r) => r.partition).join(", ");
        const message = `${(error as Error).message} (partition ${keys.partition}; partitions ` +
          `${rebuilt} were rebuilt before it)`;
        throw error instanceof RebuildRefused
          ? new RebuildRefused(message, { cause: error })
          : new Error(message, { cause: error });
      },
    );
    done += result.events;
    results.push({ partition: keys.partition, ...result });
  }
  if (results.length === 1) {
    const { partition: _partition, ...only } = results[0];
    return only;
  }
  const events = results.reduce((n, r) => n + r.events, 0);
  const seconds = Math.round(results.reduce((n, r) => n + r.seconds, 0) * 1000) / 1000;
  return {
    from_generation: Math.max(...results.map((r) => r.from_generation)),
    generation: Math.max(...results.map((r) => r.generation)),
    events,
    seconds,
    events_per_second: Math.round(events / Math.max(seconds, 0.001)),
    partitions: results,
  };
}
