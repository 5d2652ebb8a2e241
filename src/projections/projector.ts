import { callWithKey, type RedisClient, scanKeys, unlinkKeys } from "../redis/client.ts";
import { isMissingGroup } from "../consumer_registry.ts";
import { compareIds, decodeValid, idTime } from "../events.ts";
import type { Keys } from "../keys.ts";
import type { Logger } from "../log.ts";
import type { Samples } from "../metrics/samples.ts";
import { viewGeneration } from "../queries.ts";
import { Lease } from "../redis/lease.ts";
import { projectScript } from "../redis/scripts.ts";
import { ensureGroup, groupInfo, type StreamEntry, xgroup } from "../redis/streams.ts";
import { sleep } from "../sleep.ts";
import type { LeaseShare } from "./lease_share.ts";
import type { Op } from "./definition.ts";
import { type Projection, projectionLease } from "./registry.ts";

export interface ProjectorOptions {
  redis: RedisClient;
  /** A dedicated connection for XREAD BLOCK. */
  blocking: RedisClient;
  keys: Keys;
  log: Logger;
  owner: string;
  leaseMs?: number;
  /**
   * Events per read (default 500). While reads come back full (the projector is behind) the next
   * one asks for twice as many, up to 2,000: fewer, larger batches catch up faster (a task's view
   * is written once per batch, and each batch waits its turn in a busy process) at the cost of a
   * longer script; a read that is not full goes back to this.
   */
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

/**
 * project.lua's trailing arguments: every projection's block (its head), then every projection's
 * writes, each as its argument count followed by its arguments.
 */
function writeArgs(blocks: { head: (string | number)[]; writes: Op[] }[]): (string | number)[] {
  const args: (string | number)[] = [];
  for (const { head } of blocks) for (const value of head) args.push(value);
  for (const { writes } of blocks) {
    for (const op of writes) {
      args.push(op.length);
      for (const value of op) args.push(value);
    }
  }
  return args;
}

class LeaseLost extends Error {}
/** The process holds more than its share of the leases: this one is given to another process. */
class GivenUp extends Error {}
/** The views this projector writes were replaced by a rebuild: it stops for good. */
class Superseded extends Error {}

/**
 * Folds the task event stream into every projection of one view generation (and partition).
 *
 * Events must be applied in log order, so one process at a time holds the generation's projection
 * lease and reads. It reads the log once for all projections (XREAD from the lowest checkpoint)
 * and decodes each event once; each batch's view writes, checkpoints and consumer-group positions
 * are one script that also checks the lease and every checkpoint, so a batch is never applied
 * twice and a process that lost its lease cannot write. Reads change nothing in Redis, so a
 * former holder's read that lands late is harmless. Each projection keeps its own consumer group
 * (moved by the script to its checkpoint: XINFO lag, retention and /health read it) and its own
 * checkpoint, so projections that stand at different places (after an upgrade) each go on from
 * theirs.
 */
export class Projector {
  readonly #stop = new AbortController();
  #loop: Promise<void> | null = null;
  readonly leaseMs: number;
  readonly generation: number;

  constructor(readonly projections: Projection[], readonly options: ProjectorOptions) {
    if (projections.length === 0) throw new Error("A projector needs at least one projection");
    this.leaseMs = options.leaseMs ?? 10_000;
    this.generation = projections[0].generation;
  }

  /** The projections' consumer groups. */
  get groups(): string[] {
    return this.projections.map((p) => p.group);
  }

  async start(): Promise<void> {
    const { redis, keys } = this.options;
    // With a checkpoint but no group the log was lost underneath the views: the lease holder
    // finds out and folds it again (#reconcile); creating the group here would hide that.
    for (const group of this.groups) {
      if (await redis.get(keys.checkpoint(group)) === null) {
        await ensureGroup(redis, keys.eventStream, group);
      }
    }
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
  }

  async #run(): Promise<void> {
    const { redis, keys, owner, log } = this.options;
    const lease = new Lease(redis, projectionLease(keys, this.generation), owner, this.leaseMs);
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
        log.debug("Projection lease taken", { generation: this.generation });
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
          log.info("Projections superseded by a rebuild", { generation: this.generation });
          // Their groups may have been recreated after the rebuild dropped them (a process that
          // started during the swap): drop them again, so they hold no entries back from retention.
          for (const group of this.groups) {
            await dropProjectionGroup(redis, keys, group).catch(() => {});
          }
          break;
        }
        if (!(error instanceof LeaseLost)) {
          log.error("Projection failed", { generation: this.generation, error: String(error) });
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
      let checkpoints = await this.#reconcile();
      const base = this.options.batchSize ?? 500;
      let count = base;
      while (leading && !signal.aborted) {
        if (this.options.share?.giveUp()) throw new GivenUp();
        try {
          const from = checkpoints.reduce((low, c) => compareIds(c, low) < 0 ? c : low);
          const reply = await blocking.xread(
            "COUNT",
            count,
            "BLOCK",
            this.options.blockMs ?? 250,
            "STREAMS",
            keys.eventStream,
            from,
          ) as [string, [string, string[] | null][]][] | null;
          const entries = (reply?.[0]?.[1] ?? []).map(([id, fields]) => ({
            id,
            fields: fields ?? [],
          }));
          if (entries.length === 0) continue;
          checkpoints = await this.#apply(entries, checkpoints);
          count = entries.length === count ? Math.min(count * 2, Math.max(base, 2_000)) : base;
        } catch (error) {
          if (!isMissingGroup(error) || signal.aborted) throw error;
          checkpoints = await this.#reconcile();
        }
      }
      if (!leading) throw new LeaseLost();
    } finally {
      stopRenewing();
    }
  }

  /**
   * Reconciles every projection (see #reconcileOne) and sets each group to its checkpoint (a group
   * moved by hand, or read by an older version, may stand elsewhere); returns the checkpoints.
   */
  async #reconcile(): Promise<string[]> {
    const checkpoints: string[] = [];
    for (const projection of this.projections) {
      checkpoints.push(await this.#reconcileOne(projection));
    }
    const reply = await this.#commit(
      checkpoints,
      checkpoints,
      checkpoints.map(() => 0),
      checkpoints.map(() => []),
    );
    if (reply === -1) throw new LeaseLost();
    if (reply === -3) throw new Superseded(`Views of generation ${this.generation} were replaced`);
    if (reply === -2) return await this.#reconcile();
    return checkpoints;
  }

  /**
   * Checks, as the lease holder, that the group and checkpoint still match the log, and returns
   * the checkpoint to go on from. Redis may have lost the log (restarted empty, FLUSHALL, a fresh
   * replica) or just the stream: then the group is missing, or the checkpoint is past the last
   * id the stream ever had. Without a checkpoint (it went with the data) the group is recreated
   * at the log's start; with one, the views fold events the log no longer has, so they are
   * dropped first, as a rebuild would: the projection is folded again from the current log.
   */
  async #reconcileOne(projection: Projection): Promise<string> {
    const { redis, keys, log } = this.options;
    const { group } = projection;
    const stream = keys.eventStream;
    const [checkpoint, groups, last] = await Promise.all([
      redis.get(keys.checkpoint(group)),
      groupInfo(redis, stream),
      lastGeneratedId(redis, stream),
    ]);
    const found = groups.find((g) => g.name === group);
    const reset = checkpoint !== null && (!found || compareIds(checkpoint, last) > 0);
    if (found && !reset) return checkpoint ?? "0-0";
    // A rebuild's swap dropped this generation's group: not a reset.
    if (await viewGeneration(redis, keys) > projection.generation) {
      throw new Superseded(`Views of generation ${projection.generation} were replaced`);
    }
    if (reset) {
      log.warn("The event log was reset under the views: folding it again from its start", {
        projection: group,
        checkpoint,
        log_last_id: last,
      });
      for (const pattern of projection.ownedKeys) await deleteMatching(redis, pattern);
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

  /**
   * One projection script call: from `checkpoints` to `next` (`entries` log entries apart) with
   * each projection's writes. Returns the script's reply (1 applied, -1, -2, -3).
   */
  #commit(checkpoints: string[], next: string[], entries: number[], plans: Op[][]) {
    const { redis, keys, owner } = this.options;
    return projectScript.run(redis, {
      keys: {
        lease: projectionLease(keys, this.generation),
        events: keys.eventStream,
        view_generation: keys.viewGeneration,
      },
      args: { owner, generation: this.generation, projections: this.projections.length },
    }, {
      keys: this.projections.map((p) => keys.checkpoint(p.group)),
      args: writeArgs(this.projections.map((p, i) => ({
        head: [p.group, checkpoints[i], next[i], entries[i], plans[i].length],
        writes: plans[i],
      }))),
    });
  }

  /**
   * Applies a batch once to every projection; returns the checkpoints to read on from (the new
   * ones, or when a checkpoint moved under it, the stored ones, the batch unapplied).
   */
  async #apply(entries: StreamEntry[], checkpoints: string[]): Promise<string[]> {
    const { redis, keys, log } = this.options;
    const last = entries[entries.length - 1].id;
    const all = decodeValid(entries, log);
    // Each projection folds what lies past its own checkpoint (all of it, unless it is ahead).
    const after = checkpoints.map((checkpoint) => {
      const first = entries.findIndex((e) => compareIds(e.id, checkpoint) > 0);
      return first < 0 ? entries.length : first;
    });
    const plans = await Promise.all(this.projections.map((projection, i) => {
      if (after[i] === entries.length) return [];
      const events = after[i] === 0 ? all : all.filter((e) => compareIds(e.id, checkpoints[i]) > 0);
      return events.length ? projection.plan(events) : [];
    }));
    const next = checkpoints.map((c, i) => after[i] === entries.length ? c : last);
    const reply = await this.#commit(
      checkpoints,
      next,
      after.map((a) => entries.length - a),
      plans,
    );
    if (reply === 1) {
      const now = Date.now();
      for (const e of all) this.options.lag?.add(now - idTime(e.id));
      return next;
    }
    if (reply === -1) throw new LeaseLost();
    if (reply === -3) throw new Superseded(`Views of generation ${this.generation} were replaced`);
    // A checkpoint moved: another holder applied part of the log before losing the lease to us,
    // a write of this script failed after the projections before it were applied, or Redis lost
    // recent writes (a failover to a replica behind it). Nothing of this batch is applied here:
    // the next read starts from where each projection stands now, which may be before the batch.
    return await Promise.all(
      this.projections.map(async (p) => (await redis.get(keys.checkpoint(p.group))) ?? "0-0"),
    );
  }
}
