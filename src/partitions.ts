import {
  EventStore,
  type IngestLimits,
  type IngestResult,
  requestFingerprint,
} from "./event_store.ts";
import { createKeys, type Keys } from "./keys.ts";
import type { RedisClient } from "./redis/client.ts";
import { claimIdempotencyScript, takeTokensScript } from "./redis/scripts.ts";
import { bucketParams } from "./security/rate_limit.ts";
import type { VideoRequest } from "./webhook.ts";

/** One partition: its keys (one hash tag) and the event log under them. */
export interface Partition {
  index: number;
  keys: Keys;
  store: EventStore;
}

/** FNV-1a (32 bit) of the UTF-8 bytes: stable across processes and versions, and cheap. */
export function hash32(value: string): number {
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(value)) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** `p3-<uuid>`: a task id in partition 3 (with PARTITIONS > 1; a plain id is partition 0). */
const MARKED_ID = /^p(\d{1,4})-(.+)$/;

/**
 * The partitions an operation covers (all, or the one an operator named) and how to find a task's
 * or a dead letter's partition among them. With one partition, ids carry no marker.
 */
export interface PartitionScope {
  /** The partitions to scan (time ranges, listings). */
  readonly partitions: readonly Partition[];
  /** Whether ids shown to operators carry their partition (PARTITIONS > 1). */
  readonly marked: boolean;
  /** The partition of a task id within the scope, or null. */
  ofTask(taskId: string): Partition | null;
}

/** One partition's store as a scope (tests, and a deployment with one partition). */
export function singleScope(store: EventStore): PartitionScope {
  const partition = { index: store.keys.partition, keys: store.keys, store };
  return { partitions: [partition], marked: false, ofTask: () => partition };
}

/** A dead letter's id as operators see it: `p3-<stream id>` when ids are marked. */
export function markId(scope: PartitionScope, partition: Partition, id: string): string {
  return scope.marked ? `p${partition.index}-${id}` : id;
}

/** The partition and stream id a (possibly marked) dead-letter id names, or null. */
export function unmarkId(
  scope: PartitionScope,
  id: string,
): { partition: Partition; id: string } | null {
  const marked = MARKED_ID.exec(id);
  if (!scope.marked) return marked ? null : { partition: scope.partitions[0], id };
  if (!marked) return null;
  const partition = scope.partitions.find((p) => p.index === Number(marked[1]));
  return partition ? { partition, id: marked[2] } : null;
}

/** Thrown at start when the prefix was created with another partition count. */
export class PartitionCountMismatch extends Error {}

/**
 * The partitions of a deployment: which one holds a task (its id says), a video (its id's hash)
 * or an idempotency claim (the hash of user and key). The partition of a task is its video's, so
 * a video's revision counter, its revision claims and its view share the task's slot, and one
 * script can claim a revision atomically. See ARCHITECTURE.md, "Partitions".
 */
export class Partitions {
  readonly list: readonly Partition[];
  /**
   * With ACK_REPLICAS: the connections acknowledged ingests use, in turn. WAIT blocks its
   * connection until the replicas answer, so it never runs on the shared commands connection.
   */
  ackConnections: RedisClient[] = [];
  #nextAck = 0;

  constructor(
    readonly redis: RedisClient,
    readonly prefix: string,
    readonly count: number,
    storeOptions: { idempotencyTtlS: number; timelineTtlS: number },
  ) {
    if (!Number.isSafeInteger(count) || count < 1) {
      throw new RangeError(`Partition count must be a positive integer, got ${count}`);
    }
    this.list = Array.from({ length: count }, (_, index) => {
      const keys = createKeys(prefix, index);
      return { index, keys, store: new EventStore(redis, keys, storeOptions) };
    });
  }

  /** Partition 0: it also holds the deployment-wide keys (registry, rate limits, webhook ids). */
  get first(): Partition {
    return this.list[0];
  }

  /** The partition numbered `index`, or null when there is none. */
  at(index: number): Partition | null {
    return Number.isInteger(index) ? this.list[index] ?? null : null;
  }

  /** The partitions an operator names: one (`index`), or all when none is named. */
  select(index?: number | null): readonly Partition[] {
    if (index === undefined || index === null) return this.list;
    const one = this.at(index);
    if (!one) {
      throw new RangeError(`No partition ${index}: partitions are 0 to ${this.count - 1}`);
    }
    return [one];
  }

  /** All partitions, or the one named (RangeError for one that does not exist). */
  scope(index?: number | null): PartitionScope {
    const partitions = this.select(index);
    return {
      partitions,
      marked: this.count > 1,
      ofTask: (taskId) => {
        const partition = this.ofTask(taskId);
        return partition && partitions.includes(partition) ? partition : null;
      },
    };
  }

  /** The partition a task id names, or null for an id no partition can hold (an unknown task). */
  ofTask(taskId: string): Partition | null {
    const marked = MARKED_ID.exec(taskId);
    if (!marked) return this.first;
    return this.at(Number(marked[1]));
  }

  /** A video's partition: where its tasks, revisions and view live. */
  ofVideo(videoId: string): Partition {
    return this.count === 1 ? this.first : this.list[hash32(videoId) % this.count];
  }

  /** Where an idempotency key's claim lives (PARTITIONS > 1). */
  ofClaim(userId: string, key: string): Partition {
    return this.list[hash32(`${userId.length}:${userId}:${key}`) % this.count];
  }

  /** A new task id in `partition`: a plain UUID with one partition, `p<k>-<uuid>` with more. */
  newTaskId(partition: Partition): string {
    const id = crypto.randomUUID();
    return this.count === 1 ? id : `p${partition.index}-${id}`;
  }

  /**
   * Records a webhook as a task in its video's partition, or finds the task its idempotency key
   * made. One partition: one script (rate limits, key, work entry, event). More: the rate-limit
   * buckets (partition 0) first, then the key's claim in its own partition, then the ingest in
   * the video's partition, idempotent on the claimed task id; a crash in between is repaired by
   * the client's retry, which finds the claim.
   */
  async ingest(
    request: VideoRequest,
    at: string,
    options: { limits?: IngestLimits; ack?: { replicas: number; timeoutMs: number } } = {},
  ): Promise<IngestResult> {
    const target = this.ofVideo(request.video_id);
    const fingerprint = requestFingerprint(request);
    let taskId = this.newTaskId(target);
    if (this.count === 1) {
      return await target.store.ingest(request, at, {
        taskId,
        fingerprint,
        limits: options.limits,
        ack: this.#ack(options),
      });
    }
    const { limits } = options;
    if (limits && limits.buckets.length) {
      const bucket = bucketParams(limits.perMinute);
      const wait = Number(
        await takeTokensScript.run(this.redis, {
          keys: {},
          args: {
            capacity: bucket.capacity,
            rate: bucket.rate,
            now_ms: Math.floor(limits.nowMs),
            ttl_ms: bucket.ttlMs,
          },
        }, { keys: limits.buckets }),
      );
      if (wait > 0) return { limited: true, retryAfterS: Math.max(1, Math.ceil(wait / 1_000)) };
    }
    const key = request.idempotency_key;
    if (key) {
      const claimKey = this.ofClaim(request.user_id, key).keys.idempotencyClaim(
        request.user_id,
        key,
      );
      const claim = (stale: string) =>
        claimIdempotencyScript.run(this.redis, {
          keys: { claim: claimKey },
          args: {
            task_id: taskId,
            fingerprint,
            ttl_s: target.store.options.idempotencyTtlS,
            stale,
          },
        }) as Promise<[string, number, string?]>;
      let [claimed, state] = await claim("");
      if (state === 2 && !await this.#taskExists(claimed)) {
        // A claim whose task was never appended (a crash in between) and whose retry changed
        // its body: taken over, rather than refusing the key for IDEMPOTENCY_TTL_S.
        const stale = await this.redis.get(claimKey);
        if (stale !== null && stale.startsWith(`${claimed} `)) {
          [claimed, state] = await claim(stale);
        }
      }
      if (state === 2) return { conflict: true, task_id: claimed };
      taskId = claimed;
    }
    // The claimed task's partition is the video's: the same request has the same video.
    const owner = this.ofTask(taskId) ?? target;
    return await owner.store.ingest(request, at, { taskId, fingerprint, ack: this.#ack(options) });
  }

  /** Whether a task was appended (its timeline exists in its partition). */
  async #taskExists(taskId: string): Promise<boolean> {
    const partition = this.ofTask(taskId);
    return partition !== null && await this.redis.exists(partition.keys.taskTimeline(taskId)) === 1;
  }

  #ack(options: { ack?: { replicas: number; timeoutMs: number } }) {
    if (!options.ack || options.ack.replicas <= 0) return undefined;
    const redis = this.ackConnections.length
      ? this.ackConnections[this.#nextAck++ % this.ackConnections.length]
      : undefined;
    return { ...options.ack, redis };
  }

  /**
   * Stores the partition count under the prefix on first start, or checks it: a process started
   * with another count than the deployment's would put tasks where nobody looks. A prefix holding
   * data from before partitions existed counts as one partition.
   */
  async checkCount(): Promise<void> {
    const key = this.first.keys.partitionCount;
    const stored = await this.redis.get(key);
    if (stored === null) {
      const legacy = await this.redis.exists(this.first.keys.webhookStream);
      const value = legacy && this.count !== 1 ? "1" : String(this.count);
      await this.redis.set(key, value, "NX");
      return await this.checkCount();
    }
    if (Number(stored) !== this.count) {
      throw new PartitionCountMismatch(
        `KEY_PREFIX "${this.prefix}" holds ${stored} partition(s) but PARTITIONS=${this.count}: ` +
          `start with PARTITIONS=${stored}, or run PARTITIONS=${this.count} on a new KEY_PREFIX ` +
          `and drain this one (README, "Moving to more partitions")`,
      );
    }
  }
}
