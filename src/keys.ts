/**
 * Every Redis key name the service uses, built here and nowhere else.
 *
 * All keys carry one hash tag, `{prefix}`, so every Lua script that touches several of them
 * stays on one Redis Cluster slot. Moving to per-task slots would be a change in this file only.
 */
export type Keys = ReturnType<typeof createKeys>;

export function createKeys(prefix: string) {
  const p = `{${prefix}}`;
  return {
    prefix,
    /** Every key of this prefix, for SCAN in tests and tools. */
    pattern: `${p}:*`,
    webhookStream: `${p}:stream:webhooks`,
    eventStream: `${p}:stream:events`,
    deadLetterStream: `${p}:stream:dead`,
    /** An idempotency key, scoped to its user (the length keeps "a:b"+"c" apart from "a"+"b:c"). */
    idempotency: (userId: string, key: string) => `${p}:idem:${userId.length}:${userId}:${key}`,
    /** Ids of a task's events in the event stream, in order: the task's timeline index. */
    taskTimeline: (taskId: string) => `${p}:timeline:${taskId}`,
    /** A task's current run number (absent means 1), for reprocess compare-and-set. */
    taskRun: (taskId: string) => `${p}:run:${taskId}`,
    /** The generation of views readers use; a projection rebuild builds the next and swaps. */
    viewGeneration: `${p}:view-generation`,
    /** The last revision number handed out for a video, so two tasks never get the same one. */
    videoRevision: (videoId: string) => `${p}:video-revision:${videoId}`,
    views: (generation: number) => viewKeys(p, generation),
    /** Taken by the process that trims the streams this round. */
    retentionLease: `${p}:retention-lease`,
    /** Held while a projection rebuild runs, so two cannot race. */
    rebuildLock: `${p}:view-rebuild-lock`,
    /** Generation 0's view keys. */
    ...viewKeys(p, 0),
    /** A verified Standard Webhooks id, kept for replay detection. */
    webhookId: (id: string) => `${p}:webhook-id:${id}`,
    /** A token bucket: scope "address" or "user". */
    rateLimit: (scope: "address" | "user", id: string) => `${p}:rate:${scope}:${id}`,
    checkpoint: (projection: string) => `${p}:checkpoint:${projection}`,
    lease: (projection: string) => `${p}:lease:${projection}`,
  };
}

/** The keys of one generation of views: `{vp}:view:…` for 0, `{vp}:view@N:…` after rebuilds. */
function viewKeys(p: string, generation: number) {
  const v = generation === 0 ? `${p}:view` : `${p}:view@${generation}`;
  return {
    /** Every view key of this generation. */
    viewPattern: `${v}:*`,
    taskView: (taskId: string) => `${v}:task:${taskId}`,
    videoView: (videoId: string) => `${v}:video:${videoId}`,
    stats: `${v}:stats`,
    /** task id -> status as seen by the stats projection, to move counters between states. */
    statsStatus: `${v}:stats:status`,
    /** task id -> processing time in ms, for percentiles. */
    statsDurations: `${v}:stats:durations`,
    /** completion time (score, ms) of each finished task, for throughput. */
    statsFinished: `${v}:stats:finished`,
  };
}

export type ViewKeys = ReturnType<typeof viewKeys>;

/** A projection's consumer group (also its checkpoint and lease name) in a view generation. */
export function projectionGroup(name: ProjectionName, generation: number): string {
  return generation === 0 ? name : `${name}@${generation}`;
}

export const WORKER_GROUP = "workers";
/** Downstream groups on the event stream: any number of consumers each, effects idempotent. */
export const SINK_GROUP = "scene-sink";
export const CALLBACK_GROUP = "callbacks";
/**
 * Where each consumer group starts when it is created: the downstream groups at the stream's end,
 * so adding them to a stream with history never replays outcomes handled before them.
 */
export const GROUP_START = {
  [WORKER_GROUP]: "0",
  [SINK_GROUP]: "$",
  [CALLBACK_GROUP]: "$",
} as const;
export const PROJECTION_GROUPS = ["task-view", "video-scenes", "stats"] as const;
export type ProjectionName = (typeof PROJECTION_GROUPS)[number];
