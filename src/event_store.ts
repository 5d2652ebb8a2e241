import type { RedisClient } from "./redis/client.ts";
import { decodeEvent, type StoredEvent, type TaskEvent } from "./events.ts";
import type { Keys } from "./keys.ts";
import { Batcher } from "./redis/batcher.ts";
import { ingestScript, settleScript } from "./redis/scripts.ts";
import { bucketParams } from "./security/rate_limit.ts";
import type { VideoRequest } from "./webhook.ts";
import { createHash } from "node:crypto";

/**
 * What an idempotency key is checked against on its reuse: the validated request, so the same
 * key with another body is a conflict (409) rather than silently the first task. Keys are sorted
 * first, so the order of the fields a sender writes (unknown ones are kept as sent) is no change.
 */
export function requestFingerprint(request: VideoRequest): string {
  return createHash("sha1").update(JSON.stringify(sortedKeys(request))).digest("hex");
}

function sortedKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortedKeys);
  if (value === null || typeof value !== "object") return value;
  const record = value as Record<string, unknown>;
  return Object.fromEntries(Object.keys(record).sort().map((k) => [k, sortedKeys(record[k])]));
}

export type IngestResult =
  | {
    task_id: string;
    duplicate: boolean;
    limited?: undefined;
    conflict?: undefined;
    /** With `ack`: how many replicas acknowledged the write (WAIT's answer). */
    replicas?: number;
  }
  /** The idempotency key made `task_id` from another request. */
  | { conflict: true; task_id: string; limited?: undefined }
  | { limited: true; retryAfterS: number; conflict?: undefined };

/** Rate-limit buckets checked in the same script as the append. */
export interface IngestLimits {
  buckets: string[];
  perMinute: number;
  nowMs: number;
}

export interface IngestOptions {
  /** The new task's id (it carries its partition). */
  taskId: string;
  /** The request's fingerprint, kept with its idempotency key (see requestFingerprint). */
  fingerprint: string;
  /** Rate-limit buckets taken in the same script (only when they share its slot). */
  limits?: IngestLimits;
  /**
   * Wait until this many replicas hold the write (WAIT on the same connection), up to timeoutMs,
   * on `redis` (a connection of its own: WAIT holds up the commands queued behind it).
   */
  ack?: { replicas: number; timeoutMs: number; redis?: RedisClient };
}

export type SettleMode = "append" | "ack" | "dead";

export interface SettleInput {
  /** The stream whose entry the caller holds; the webhook stream unless given. */
  stream?: string;
  group: string;
  consumer: string;
  /** The work entry the caller holds; writes are refused once another consumer owns it. */
  entryId: string;
  taskId: string;
  mode: SettleMode;
  events?: Omit<TaskEvent, "task_id">[];
  deadLetter?: { error: string; attempts: number; payload: string };
  at: string;
}

/** Thrown when a worker writes for an entry another worker has reclaimed. */
export class ClaimLostError extends Error {}

/** The most settles one script call takes (a script holds up Redis while it runs). */
export const SETTLE_BATCH_MAX = 64;

/** One settle as settle.lua takes it: its keys, and its fields followed by its events. */
interface EncodedSettle {
  entryId: string;
  keys: [timeline: string, held: string];
  args: (string | number)[];
}

/** The event log: work entries, task events, timelines and dead letters in Redis Streams. */
export class EventStore {
  /** Settles of this turn waiting to go to Redis together (see `settle`). */
  readonly #settles = new Batcher<EncodedSettle, string>(
    (batch) => this.#settleMany(batch),
    { max: SETTLE_BATCH_MAX },
  );

  constructor(
    readonly redis: RedisClient,
    readonly keys: Keys,
    readonly options: { idempotencyTtlS: number; timelineTtlS: number },
  ) {}

  /**
   * Appends a new task (atomically with its idempotency key), or finds the existing one; with
   * `limits`, first takes a token from each bucket, all in one round trip; with `ack`, WAITs for
   * replicas on the same connection.
   */
  async ingest(request: VideoRequest, at: string, options: IngestOptions): Promise<IngestResult> {
    const { taskId, limits, ack } = options;
    const key = request.idempotency_key;
    const bucket = limits ? bucketParams(limits.perMinute) : null;
    const call = {
      keys: {
        idempotency: this.keys.idempotency(request.user_id, key ?? ""),
        webhooks: this.keys.webhookStream,
        events: this.keys.eventStream,
        timeline: this.keys.taskTimeline(taskId),
      },
      args: {
        task_id: taskId,
        idempotency_ttl_s: this.options.idempotencyTtlS,
        payload: JSON.stringify(request),
        at,
        has_idempotency_key: key ? "1" : "0",
        video_id: request.video_id,
        user_id: request.user_id,
        is_revision: request.is_revision ? "1" : "0",
        idempotency_key: key ?? "",
        prompt: request.prompt,
        timeline_ttl_s: this.options.timelineTtlS,
        bucket_capacity: bucket?.capacity ?? 0,
        bucket_rate: bucket?.rate ?? 0,
        now_ms: Math.floor(limits?.nowMs ?? 0),
        bucket_ttl_ms: bucket?.ttlMs ?? 0,
        fingerprint: options.fingerprint,
      },
    };
    const extra = { keys: limits?.buckets };
    let reply: [string, number, number?];
    let replicas: number | undefined;
    if (ack && ack.replicas > 0) {
      const [value, acked] = await ingestScript.runThenWait(
        ack.redis ?? this.redis,
        call,
        extra,
        ack,
      );
      reply = value as [string, number, number?];
      replicas = acked;
    } else {
      reply = await ingestScript.run(this.redis, call, extra) as [string, number, number?];
    }
    if (reply[1] === -1) {
      return { limited: true, retryAfterS: Math.max(1, Math.ceil((reply[2] ?? 0) / 1_000)) };
    }
    if (reply[1] === 2) return { conflict: true, task_id: reply[0] };
    return { task_id: reply[0], duplicate: reply[1] === 1, replicas };
  }

  /**
   * Appends a worker's events, and acks or dead-letters its entry, in one fenced script; throws
   * ClaimLostError, having written nothing, once another consumer owns the entry.
   *
   * Settles issued in the same turn of the event loop go to Redis as one script call (at most
   * SETTLE_BATCH_MAX; the store is one partition's, so they share its Cluster slot), each still
   * fenced, written, acknowledged and answered on its own: one settle's fencing or error is no
   * other's. A call that fails as a whole (Redis unreachable, a timeout) fails every settle in it.
   */
  async settle(input: SettleInput): Promise<string> {
    // Encoded here, so a settle that cannot be encoded fails on its own, outside any batch.
    const events = input.events ?? [];
    return await this.#settles.add({
      entryId: input.entryId,
      keys: [this.keys.taskTimeline(input.taskId), input.stream ?? this.keys.webhookStream],
      args: [
        input.group,
        input.consumer,
        input.entryId,
        input.mode,
        input.taskId,
        input.at,
        input.deadLetter?.error ?? "",
        input.deadLetter?.attempts ?? 0,
        input.deadLetter?.payload ?? "",
        events.length,
        // Each event as a (type, at, data JSON) triple.
        ...events.flatMap((e) => [e.type, e.at, JSON.stringify(e.data)]),
      ],
    });
  }

  async #settleMany(batch: EncodedSettle[]): Promise<(string | Error)[]> {
    const replies = await settleScript.run(this.redis, {
      keys: { events: this.keys.eventStream, dead_letters: this.keys.deadLetterStream },
      args: { timeline_ttl_s: this.options.timelineTtlS },
    }, {
      keys: batch.flatMap((s) => s.keys),
      args: batch.flatMap((s) => s.args),
    }) as unknown[];
    return replies.map((reply, i) =>
      reply instanceof Error
        ? reply
        : reply === -1
        ? new ClaimLostError(`Entry "${batch[i].entryId}" is no longer ours`)
        : String(reply)
    );
  }

  /** The request JSON a task was created from, read from its work entry ("" once trimmed). */
  async payload(webhookEntryId: string): Promise<string> {
    const [entry] = await this.redis.xrange(
      this.keys.webhookStream,
      webhookEntryId,
      webhookEntryId,
    );
    if (!entry) return "";
    const at = entry[1].indexOf("payload");
    return at >= 0 ? entry[1][at + 1] : "";
  }

  /** A task's events in order, read from the log through its timeline index. */
  async timeline(taskId: string): Promise<StoredEvent[]> {
    return await this.events(await this.redis.lrange(this.keys.taskTimeline(taskId), 0, -1));
  }

  /** Events of the log by id, in the order given, in one round trip (trimmed ones are left out). */
  async events(ids: string[]): Promise<StoredEvent[]> {
    if (ids.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.xrange(this.keys.eventStream, id, id);
    const replies = (await pipeline.exec()) ?? [];
    const events: StoredEvent[] = [];
    for (const [error, entries] of replies) {
      if (error) throw error;
      for (const [id, fields] of entries as [string, string[]][]) {
        events.push(decodeEvent(id, fields));
      }
    }
    return events;
  }
}
