/**
 * Every Redis key name the service uses, built here and nowhere else.
 *
 * The keys of one partition carry one hash tag, so every Lua script (which touches the keys of one
 * partition only) stays on one Redis Cluster slot: partition 0 is `{prefix}` (with PARTITIONS=1
 * that is the whole layout, as before partitions existed), partition k > 0 is `{prefix:k}`.
 * Deployment-wide keys (the partition count, the consumer registry, rate-limit buckets, webhook
 * ids) live in partition 0's tag.
 */
export type Keys = ReturnType<typeof createKeys>;

/** The hash tag of a partition: `{vp}` for partition 0, `{vp:3}` for partition 3. */
export function partitionTag(prefix: string, partition: number): string {
  return partition === 0 ? `{${prefix}}` : `{${prefix}:${partition}}`;
}

export function createKeys(prefix: string, partition = 0) {
  const p = partitionTag(prefix, partition);
  /** Partition 0's tag, for the keys of the whole deployment. */
  const d = partitionTag(prefix, 0);
  return {
    prefix,
    partition,
    /** Every key of this partition, for SCAN in tests and tools. */
    pattern: `${p}:*`,
    /** The partition count the deployment under this prefix was started with. */
    partitionCount: `${d}:partitions`,
    webhookStream: `${p}:stream:webhooks`,
    eventStream: `${p}:stream:events`,
    deadLetterStream: `${p}:stream:dead`,
    /** An idempotency key, scoped to its user (the length keeps "a:b"+"c" apart from "a"+"b:c"). */
    idempotency: (userId: string, key: string) => `${p}:idem:${userId.length}:${userId}:${key}`,
    /**
     * With PARTITIONS > 1, the claim of an idempotency key in the partition its (user, key) hashes
     * to: which task (and so which partition) it made, and the request's fingerprint.
     */
    idempotencyClaim: (userId: string, key: string) =>
      `${p}:idem-claim:${userId.length}:${userId}:${key}`,
    /** Ids of a task's events in the event stream, in order: the task's timeline index. */
    taskTimeline: (taskId: string) => `${p}:timeline:${taskId}`,
    /** A task's current run number (absent means 1), for reprocess compare-and-set. */
    taskRun: (taskId: string) => `${p}:run:${taskId}`,
    /** The generation of views readers use; a projection rebuild builds the next and swaps. */
    viewGeneration: `${p}:view-generation`,
    /** The last revision number handed out for a video, so two tasks never get the same one. */
    videoRevision: (videoId: string) => `${p}:video-revision:${videoId}`,
    /** The revision a task claimed, so a repeated scenes step gets the same number. */
    revisionClaim: (taskId: string) => `${p}:revision-claim:${taskId}`,
    /** A generation of views; `{vp}:view-generation` says which one readers use. */
    views: (generation: number) => viewSpace(p, generation),
    /** Taken by the process that trims the streams this round. */
    retentionLease: `${p}:retention-lease`,
    /** Which consumer kinds some process runs (kind → groups and when it last said so). */
    consumerKinds: `${d}:consumer-kinds`,
    /** With several partitions: the processes running projections (owner → last beat, ms). */
    projectionProcesses: `${d}:projection-processes`,
    /** Held while a projection rebuild runs, so two cannot race. */
    rebuildLock: `${p}:view-rebuild-lock`,
    /** A verified Standard Webhooks id, kept for replay detection. */
    webhookId: (id: string) => `${d}:webhook-id:${id}`,
    /** A token bucket: scope "address" or "user". */
    rateLimit: (scope: "address" | "user", id: string) => `${d}:rate:${scope}:${id}`,
    /**
     * A user's token bucket as seen from one sender (authentication off). The address's length
     * comes first, so no (address, user) pair can pass for another.
     */
    senderRateLimit: (address: string, userId: string) =>
      `${d}:rate:user:${address.length}:${address}:${userId}`,
    /** A dashboard session, under the SHA-256 of its cookie's id (src/dashboard/session.ts). */
    dashboardSession: (idHash: string) => `${d}:dashboard-session:${idHash}`,
    /** Dashboard sign-in attempts from one client address: a token bucket. */
    dashboardSignIn: (address: string) => `${d}:rate:dashboard-sign-in:${address}`,
    /** A projection group's last applied event id (the group name carries the generation). */
    checkpoint: (projection: string) => `${p}:checkpoint:${projection}`,
    /** Held by the one process applying a projection group's events. */
    lease: (projection: string) => `${p}:lease:${projection}`,
  };
}

/**
 * One generation of views: `{vp}:view` for 0, `{vp}:view@N` after rebuilds. Each projection
 * builds its own keys on `prefix` (src/projections/<name>/view.ts).
 */
function viewSpace(p: string, generation: number) {
  const prefix = viewPrefix(p, generation);
  return {
    prefix,
    /** Every view key of this generation. */
    viewPattern: `${prefix}:*`,
  };
}

export type ViewSpace = ReturnType<typeof viewSpace>;

const viewPrefix = (p: string, generation: number) =>
  generation === 0 ? `${p}:view` : `${p}:view@${generation}`;

/** A projection's consumer group (also its checkpoint and lease name) in a view generation. */
export function projectionGroup(name: string, generation: number): string {
  return generation === 0 ? name : `${name}@${generation}`;
}
