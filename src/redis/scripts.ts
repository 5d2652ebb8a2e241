/**
 * The service's Lua scripts, one file each in `./lua/` (see each file's header for what it does,
 * its KEYS and ARGV, and its reply), declared with their keys and args by name.
 */
import { defineScript } from "./script.ts";
import { TOKEN_UNIT } from "../security/rate_limit.ts";

/** Records a webhook as a task (or finds its duplicate) after taking rate-limit tokens. */
export const ingestScript = defineScript({
  name: "ingest",
  keys: ["idempotency", "webhooks", "events", "timeline"],
  args: [
    "task_id",
    "idempotency_ttl_s",
    "payload",
    "at",
    "has_idempotency_key",
    "video_id",
    "user_id",
    "is_revision",
    "idempotency_key",
    "prompt",
    "timeline_ttl_s",
    "bucket_capacity",
    "bucket_rate",
    "now_ms",
    "bucket_ttl_ms",
    "fingerprint",
  ],
  extra: { keys: true }, // rate-limit buckets
  constants: { TOKEN: TOKEN_UNIT },
});

/** With PARTITIONS > 1: claims an idempotency key for a task before its ingest. */
export const claimIdempotencyScript = defineScript({
  name: "claim_idempotency",
  keys: ["claim"],
  args: ["task_id", "fingerprint", "ttl_s", "stale"],
});

/** Takes a token from each rate-limit bucket, or none (ingest's check on its own). */
export const takeTokensScript = defineScript({
  name: "take_tokens",
  keys: [],
  args: ["capacity", "rate", "now_ms", "ttl_ms"],
  extra: { keys: true }, // the buckets
  constants: { TOKEN: TOKEN_UNIT },
});

/**
 * Settles held entries of one partition in one call, each fenced on its own entry: appends its
 * events while its caller owns the entry, and acks or dead-letters it (see `EventStore.settle`).
 */
export const settleScript = defineScript({
  name: "settle",
  keys: ["events", "dead_letters"],
  args: ["timeline_ttl_s"],
  extra: { keys: true, args: true }, // per settle: its keys, and its fields and events
});

/** Resets a held entry's idle time, only for its owner. */
export const heartbeatScript = defineScript({
  name: "heartbeat",
  keys: ["stream"],
  args: ["group", "consumer", "entry_id"],
});

/**
 * Applies a batch to every projection of a generation: their writes, checkpoints and group
 * positions, fenced by the lease and each checkpoint.
 */
export const projectScript = defineScript({
  name: "project",
  keys: ["lease", "events", "view_generation"],
  args: ["owner", "generation", "projections"],
  extra: { keys: true, args: true }, // checkpoints; per projection its block, then the writes
});

/** Hands out a video's next revision number. */
export const claimRevisionScript = defineScript({
  name: "claim_revision",
  keys: ["revision", "claim"],
  args: ["latest", "ttl_s"],
});

/** Renews a lease only for its owner (use {@linkcode Lease} from `./lease.ts`). */
export const renewLeaseScript = defineScript({
  name: "renew_lease",
  keys: ["lease"],
  args: ["owner", "ttl_ms"],
});

/** Releases a lease only for its owner (use {@linkcode Lease} from `./lease.ts`). */
export const releaseLeaseScript = defineScript({
  name: "release_lease",
  keys: ["lease"],
  args: ["owner"],
});

/** Starts a new run of a task (replay or dead-letter redrive), compare-and-set on its run. */
export const reprocessScript = defineScript({
  name: "reprocess",
  keys: ["webhooks", "events", "timeline", "dead_letters", "run"],
  args: [
    "task_id",
    "payload",
    "at",
    "expected_run",
    "data",
    "dead_letter_entry",
    "timeline_ttl_s",
  ],
});

/** Deletes a dead letter for good, recording task.dead_letter_deleted in its task's timeline. */
export const deleteDeadLetterScript = defineScript({
  name: "delete_dead_letter",
  keys: ["dead_letters", "events", "timeline"],
  args: ["entry", "task_id", "at", "data", "timeline_ttl_s"],
});

/** One page of a task index set, newest first, filtered by status and prompt substring. */
export const taskIndexPageScript = defineScript({
  name: "task_index_page",
  keys: ["source", "status", "prompts"],
  args: ["max", "min", "limit", "budget", "needle", "check_status"],
});

/** A prompt search of the task index through its trigram bitmaps, exact, newest first. */
export const taskIndexGramsScript = defineScript({
  name: "task_index_grams",
  keys: ["positions", "prompts", "status"],
  args: [
    "slots",
    "blocks",
    "block_bits",
    "max",
    "min",
    "limit",
    "needle",
    "check_status",
    "cap",
  ],
  extra: { keys: true }, // the bitmap blocks
});
