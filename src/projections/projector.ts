import { callWithKey, type RedisClient, scanKeys, unlinkKeys } from "../redis/client.ts";
import { isMissingGroup } from "../consumer_registry.ts";
import { compareIds, decodeValid, idTime } from "../events.ts";
import type { Keys } from "../keys.ts";
import type { Logger } from "../log.ts";
import type { Samples } from "../metrics/samples.ts";
import { viewGeneration } from "../queries.ts";
import { Lease } from "../redis/lease.ts";
import { projectScript } from "../redis/scripts.ts";
import { ensureGroup, groupInfo, readGroup, type StreamEntry, xgroup } from "../redis/streams.ts";
import { sleep } from "../sleep.ts";
import type { LeaseShare } from "./lease_share.ts";
import type { Projection } from "./registry.ts";

/** The one consumer name every process uses for a projection group: only the lease holder reads. */
const CONSUMER = "projector";

export interface ProjectorOptions {
  redis: RedisClient;
  /** A dedicated connection for XREADGROUP BLOCK. */
  blocking: RedisClient;
  keys: Keys;
  log: Logger;
  owner: string;
  leaseMs?: number;
  batchSize?: number;
  blockMs?: number;
  /** Receives, per applied event, ms from its append (its stream id) to its view write. */
  lag?: Samples;
  /** With several partitions: the process's fair share of the leases (src/projections/lease_share.ts). */
  share?: LeaseShare;
}

/**
 * Destroys a projection's consumer group with its checkpoint and lease (views stay). Here rather
 * than in rebuild.ts, which runs projectors: the projector drops its own group when superseded.
 */
export async function dropProjectionGroup(redis: RedisClient, keys: Keys, group: string) {
  await redis.del(keys.checkpoint(group), keys.lease(group));
  try {
    await xgroup(redis, "DESTROY", keys.eventStream, group);
  } catch {
    // No stream yet: nothing to destroy.
  }
}

/**
 * Drops every view, checkpoint and lease of the given projections and destroys their consumer
 * groups, so the next projector start folds the task event stream again from its first entry.
 * Run it with the projectors stopped.
 */
export async function resetProjections(redis: RedisClient, keys: Keys, projections: Projection[]) {
  for (const projection of projections) {
    for (const pattern of projection.ownedKeys) await deleteMatching(redis, pattern);
    await dropProjectionGroup(redis, keys, projection.group);
  }
}

/** Deletes the keys matching a SCAN pattern (a plain key name matches itself). */
export async function deleteMatching(redis: RedisClient, pattern: string): Promise<number> {
  let deleted = 0;
  for await (const found of scanKeys(redis, pattern)) deleted += await unlinkKeys(redis, found);
  return deleted;
}

/** The last id ever added to a stream ("0-0" without a stream): trimming never lowers it. */
async function lastGeneratedId(redis: RedisClient, stream: string): Promise<string> {
  // Only a missing stream means an empty log: any other failure must not look like a reset
  // (that would drop the views and refold a log that retention may have trimmed).
  const info = await callWithKey(redis, stream, "XINFO", "STREAM", stream).catch((error) => {
    if (String((error as Error).message).includes("no such key")) return null;
    throw error;
  }) as unknown[] | null;
  if (!info) return "0-0";
  return String(info[info.indexOf("last-generated-id") + 1] ?? "0-0");
}

class LeaseLost extends Error {}
/** The process holds more than its share of the leases: this one is given to another process. */
class GivenUp extends Error {}
/** The views this projector writes were replaced by a rebuild: it stops for good. */
class Superseded extends Error {}

/**
 * Folds the task event stream into one projection, as the consumer group named after it.
 *
 * Events must be applied in log order, so one process at a time holds the projection's lease and
 * reads; the others wait to take over. Each batch's view writes, checkpoint and XACK are one
 * script that also checks the lease and the checkpoint, so a redelivered event is never applied
 * twice and a process that lost its lease cannot write.
 */
export class Projector {
  readonly #stop = new AbortController();
  #loop: Promise<void> | null = null;
  readonly leaseMs: number;

  constructor(readonly projection: Projection, readonly options: ProjectorOptions) {
    this.leaseMs = options.leaseMs ?? 10_000;
  }

  async start(): Promise<void> {
    const { redis, keys } = this.options;
    // With a checkpoint but no group the log was lost underneath the views: the lease holder
    // finds out and folds it again (#reconcile); creating the group here would hide that.
    if (await redis.get(keys.checkpoint(this.projection.group)) === null) {
      await ensureGroup(redis, keys.eventStream, this.projection.group);
    }
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
  }

  async #run(): Promise<void> {
    const { redis, keys, owner, log } = this.options;
    const lease = new Lease(redis, keys.lease(this.projection.group), owner, this.leaseMs);
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      try {
        const { share } = this.options;
        // Still ours after a failed round (renew): no need to wait for it to run out.
        const held = await lease.renew() ||
          (share?.mayTake() !== false && await lease.acquire());
        if (!held) {
          await sleep(Math.min(1_000, this.leaseMs / 3), signal).catch(() => {});
          continue;
        }
        log.debug("Projection lease taken", { projection: this.projection.name });
        share?.took();
        try {
          await this.#lead(lease, signal);
        } catch (error) {
          // A given-up lease was counted off when it was given up.
          if (!(error instanceof GivenUp)) share?.left();
          throw error;
        }
        share?.left();
      } catch (error) {
        if (signal.aborted) break;
        if (error instanceof GivenUp) {
          // Left to a process below its share; not taken back before the others had a chance.
          await lease.release();
          await sleep(this.leaseMs / 2, signal).catch(() => {});
          continue;
        }
        if (error instanceof Superseded) {
          log.info("Projection superseded by a rebuild", { projection: this.projection.group });
          // Its group may have been recreated after the rebuild dropped it (a process that
          // started during the swap): drop it again, so it holds no entries back from retention.
          await dropProjectionGroup(redis, keys, this.projection.group).catch(() => {});
          break;
        }
        if (!(error instanceof LeaseLost)) {
          log.error("Projection failed", {
            projection: this.projection.name,
            error: String(error),
          });
          await sleep(500, signal).catch(() => {});
        }
      }
    }
    await lease.release();
  }

  async #lead(lease: Lease, signal: AbortSignal): Promise<void> {
    const { blocking, keys } = this.options;
    let leading = true;
    const stopRenewing = lease.keepAlive(() => {
      leading = false;
    });
    try {
      let checkpoint = await this.#reconcile();
      // Only what the pending list returns is applied, oldest first: a read with ">" just moves
      // new entries into it. A former holder's read that lands late (resent after a reconnect)
      // makes entries pending that are older than the ones read here; applying a ">" batch
      // directly would move the checkpoint past them, and they would be acked unapplied.
      let id = "0";
      while (leading && !signal.aborted) {
        if (this.options.share?.giveUp()) throw new GivenUp();
        try {
          const entries = await readGroup(blocking, {
            stream: keys.eventStream,
            group: this.projection.group,
            consumer: CONSUMER,
            count: this.options.batchSize ?? 500,
            blockMs: id === ">" ? (this.options.blockMs ?? 250) : undefined,
            id,
          });
          if (id === ">") {
            id = "0";
            continue;
          }
          if (entries.length === 0) {
            id = ">";
            continue;
          }
          checkpoint = await this.#apply(entries, checkpoint);
        } catch (error) {
          if (!isMissingGroup(error) || signal.aborted) throw error;
          checkpoint = await this.#reconcile();
          id = "0";
        }
      }
      if (!leading) throw new LeaseLost();
    } finally {
      stopRenewing();
    }
  }

  /**
   * Checks, as the lease holder, that the group and checkpoint still match the log, and returns
   * the checkpoint to go on from. Redis may have lost the log (restarted empty, FLUSHALL, a fresh
   * replica) or just the stream: then the group is missing, or the checkpoint is past the last
   * id the stream ever had. Without a checkpoint (it went with the data) the group is recreated
   * at the log's start; with one, the views fold events the log no longer has, so they are
   * dropped first, as a rebuild would: the projection is folded again from the current log.
   */
  async #reconcile(): Promise<string> {
    const { redis, keys, log } = this.options;
    const { group } = this.projection;
    const stream = keys.eventStream;
    const [checkpoint, groups, last] = await Promise.all([
      redis.get(keys.checkpoint(group)),
      groupInfo(redis, stream),
      lastGeneratedId(redis, stream),
    ]);
    const exists = groups.some((g) => g.name === group);
    const reset = checkpoint !== null && (!exists || compareIds(checkpoint, last) > 0);
    if (exists && !reset) return checkpoint ?? "0-0";
    // A rebuild's swap dropped this generation's group: not a reset.
    if (await viewGeneration(redis, keys) > this.projection.generation) {
      throw new Superseded(`Views of generation ${this.projection.generation} were replaced`);
    }
    if (reset) {
      log.warn("The event log was reset under the views: folding it again from its start", {
        projection: group,
        checkpoint,
        log_last_id: last,
      });
      for (const pattern of this.projection.ownedKeys) await deleteMatching(redis, pattern);
      await redis.del(keys.checkpoint(group));
      await xgroup(redis, "DESTROY", stream, group).catch(() => {});
    } else {
      log.warn("Projection group was missing (Redis lost its data?); recreated it", {
        projection: group,
      });
    }
    await ensureGroup(redis, stream, group, "0");
    return "0-0";
  }

  /** Applies a batch once; returns the new checkpoint. */
  async #apply(entries: StreamEntry[], checkpoint: string): Promise<string> {
    const { redis, keys, owner, log } = this.options;
    while (true) {
      const events = decodeValid(
        entries.filter((e) => compareIds(e.id, checkpoint) > 0 && e.fields.length > 0),
        log,
      );
      const last = entries[entries.length - 1].id;
      const next = compareIds(last, checkpoint) > 0 ? last : checkpoint;
      const ops = events.length ? await this.projection.plan(events) : [];
      const reply = await projectScript.run(redis, {
        keys: {
          lease: keys.lease(this.projection.group),
          checkpoint: keys.checkpoint(this.projection.group),
          events: keys.eventStream,
          view_generation: keys.viewGeneration,
        },
        args: {
          owner,
          expected_checkpoint: checkpoint,
          checkpoint: next,
          group: this.projection.group,
          writes: JSON.stringify(ops),
          generation: this.projection.generation,
        },
      }, { args: entries.map((e) => e.id) });
      if (reply === 1) {
        const now = Date.now();
        for (const e of events) this.options.lag?.add(now - idTime(e.id));
        return next;
      }
      if (reply === -1) throw new LeaseLost();
      if (reply === -3) {
        throw new Superseded(`Views of generation ${this.projection.generation} were replaced`);
      }
      checkpoint = (await redis.get(keys.checkpoint(this.projection.group))) ?? "0-0";
    }
  }
}
