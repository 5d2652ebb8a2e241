import type { RedisClient } from "./redis/client.ts";
import { decodeEvent, type StoredEvent, type TaskEvent } from "./events.ts";
import type { Keys } from "./keys.ts";
import { ingestScript, settleScript } from "./redis/scripts.ts";
import { bucketParams } from "./security/rate_limit.ts";
import type { VideoRequest } from "./webhook.ts";

export type IngestResult =
  | { task_id: string; duplicate: boolean; limited?: undefined }
  | { limited: true; retryAfterS: number };

/** Rate-limit buckets checked in the same script as the append. */
export interface IngestLimits {
  buckets: string[];
  perMinute: number;
  nowMs: number;
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

/** The event log: work entries, task events, timelines and dead letters in Redis Streams. */
export class EventStore {
  constructor(
    readonly redis: RedisClient,
    readonly keys: Keys,
    readonly options: { idempotencyTtlS: number; timelineTtlS: number },
  ) {}

  /**
   * Appends a new task (atomically with its idempotency key), or finds the existing one; with
   * `limits`, first takes a token from each bucket, all in one round trip.
   */
  async ingest(request: VideoRequest, at: string, limits?: IngestLimits): Promise<IngestResult> {
    const taskId = crypto.randomUUID();
    const key = request.idempotency_key;
    const bucket = limits ? bucketParams(limits.perMinute) : null;
    const reply = await ingestScript.run(this.redis, {
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
        timeline_ttl_s: this.options.timelineTtlS,
        bucket_capacity: bucket?.capacity ?? 0,
        bucket_rate: bucket?.rate ?? 0,
        now_ms: Math.floor(limits?.nowMs ?? 0),
        bucket_ttl_ms: bucket?.ttlMs ?? 0,
      },
    }, { keys: limits?.buckets }) as [string, number, number?];
    if (reply[1] === -1) {
      return { limited: true, retryAfterS: Math.max(1, Math.ceil((reply[2] ?? 0) / 1_000)) };
    }
    return { task_id: reply[0], duplicate: reply[1] === 1 };
  }

  /** Appends a worker's events, and acks or dead-letters its entry, in one fenced script. */
  async settle(input: SettleInput): Promise<string> {
    // settle.lua appends each event from a (type, at, data JSON) triple.
    const events = (input.events ?? []).flatMap((e) => [e.type, e.at, JSON.stringify(e.data)]);
    const reply = await settleScript.run(this.redis, {
      keys: {
        events: this.keys.eventStream,
        timeline: this.keys.taskTimeline(input.taskId),
        held_stream: input.stream ?? this.keys.webhookStream,
        dead_letters: this.keys.deadLetterStream,
      },
      args: {
        group: input.group,
        consumer: input.consumer,
        entry_id: input.entryId,
        timeline_ttl_s: this.options.timelineTtlS,
        mode: input.mode,
        task_id: input.taskId,
        at: input.at,
        error: input.deadLetter?.error ?? "",
        attempts: input.deadLetter?.attempts ?? 0,
        payload: input.deadLetter?.payload ?? "",
      },
    }, { args: events });
    if (reply === -1) throw new ClaimLostError(`Entry "${input.entryId}" is no longer ours`);
    return String(reply);
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
    const ids = await this.redis.lrange(this.keys.taskTimeline(taskId), 0, -1);
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
