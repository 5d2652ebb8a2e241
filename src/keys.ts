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
    idempotency: (key: string) => `${p}:idem:${key}`,
    /** Ids of a task's events in the event stream, in order: the task's timeline index. */
    taskTimeline: (taskId: string) => `${p}:timeline:${taskId}`,
    taskView: (taskId: string) => `${p}:view:task:${taskId}`,
    videoView: (videoId: string) => `${p}:view:video:${videoId}`,
    stats: `${p}:view:stats`,
    /** task id -> status as seen by the stats projection, to move counters between states. */
    statsStatus: `${p}:view:stats:status`,
    /** task id -> processing time in ms, for percentiles. */
    statsDurations: `${p}:view:stats:durations`,
    /** completion time (score, ms) of each finished task, for throughput. */
    statsFinished: `${p}:view:stats:finished`,
    /** A verified Standard Webhooks id, kept for replay detection. */
    webhookId: (id: string) => `${p}:webhook-id:${id}`,
    /** A token bucket: scope "address" or "user". */
    rateLimit: (scope: "address" | "user", id: string) => `${p}:rate:${scope}:${id}`,
    checkpoint: (projection: string) => `${p}:checkpoint:${projection}`,
    lease: (projection: string) => `${p}:lease:${projection}`,
  };
}

export const WORKER_GROUP = "workers";
/** Downstream groups on the event stream: any number of consumers each, effects idempotent. */
export const SINK_GROUP = "scene-sink";
export const CALLBACK_GROUP = "callbacks";
export const PROJECTION_GROUPS = ["task-view", "video-scenes", "stats"] as const;
export type ProjectionName = (typeof PROJECTION_GROUPS)[number];
