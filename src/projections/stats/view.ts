import type { StoredEvent } from "../../events.ts";
import type { TaskStatus } from "../task_view/view.ts";

/**
 * Seconds of finish times kept behind the newest one (event times): the throughput window (the
 * last minute) plus a margin for clocks that differ between workers and the server.
 */
export const FINISHED_WINDOW_S = 120;

/**
 * Minutes of finishes kept behind the newest one (event times), for the last hour's per-minute
 * series: the hour itself plus the minute in progress.
 */
export const MINUTE_WINDOW = 60;

/**
 * The stats view's keys under a generation's view prefix (`{vp}:view:stats…` in generation 0).
 * Every one is bounded: the hashes have a fixed or windowed set of fields, and the per-task status
 * keys expire with VIEW_RETENTION_S.
 */
export function statsKeys(prefix: string) {
  return {
    /** Counters and per-step sums (hash; fixed fields). */
    counters: `${prefix}:stats`,
    /**
     * Per-task status as the stats projection last saw it, to move counters between states:
     * `<statusPrefix><task id>` (string, TTL VIEW_RETENTION_S, refreshed on every status change).
     */
    statusPrefix: `${prefix}:stats:task:`,
    /** Processing-time histogram: bucket lower bound in ms -> completions (hash; fixed buckets). */
    durations: `${prefix}:stats:duration-buckets`,
    /**
     * Finish second (event time, s since epoch) -> tasks finished in it (hash), trimmed to the
     * FINISHED_WINDOW_S seconds before the newest finish second.
     */
    finished: `${prefix}:stats:finished-by-second`,
    /**
     * Finish minute (event time, minutes since epoch) -> tasks finished in it (hash), trimmed to
     * the MINUTE_WINDOW minutes before the newest finish minute: the minutes that have a
     * `minute` hash.
     */
    minutes: `${prefix}:stats:finished-by-minute`,
    /**
     * One finish minute's `completed`, `failed` and `ms:<duration bucket>` (completions per
     * processing-time bucket) counts (hash), deleted with its field in `minutes`.
     */
    minute: (minute: number | string) => `${prefix}:stats:minute:${minute}`,
    minutePattern: `${prefix}:stats:minute:*`,
  };
}

/**
 * Keys of the earlier, unbounded layout (a status hash and two sorted sets with one entry per
 * task). Nothing writes them any more; they are listed as owned so a reset or rebuild drops them.
 */
export function legacyStatsKeys(prefix: string): string[] {
  return [`${prefix}:stats:status`, `${prefix}:stats:durations`, `${prefix}:stats:finished`];
}

/** The key of one task's status in the stats view. */
export const statsStatusKey = (prefix: string, taskId: string) =>
  `${statsKeys(prefix).statusPrefix}${taskId}`;

/**
 * The histogram bucket of a processing time: exact below 100 ms, else the value rounded down to
 * two significant digits (1,234 ms -> 1,200). 90 buckets per decade, so a day has at most 640.
 */
export function durationBucket(ms: number): number {
  const value = Math.max(0, Math.round(ms));
  if (value < 100) return value;
  const step = 10 ** (String(value).length - 2);
  return Math.floor(value / step) * step;
}

/**
 * What a bucket stands for when a percentile falls in it: its own value below 100 ms, else its
 * middle (1,200 -> 1,250), so a reported percentile is within 5 % of the exact one.
 */
export function bucketValue(bucket: number): number {
  if (bucket < 100) return bucket;
  const step = 10 ** (String(bucket).length - 2);
  return bucket + step / 2;
}

/** The q-quantile (nearest rank) of a histogram of bucket -> count, as its bucket's value. */
export function histogramPercentile(histogram: Record<string, number>, q: number): number {
  const buckets = Object.entries(histogram)
    .map(([bucket, n]) => [Number(bucket), n] as const)
    .filter(([, n]) => n > 0)
    .sort((a, b) => a[0] - b[0]);
  const count = buckets.reduce((sum, [, n]) => sum + n, 0);
  if (count === 0) return 0;
  const rank = Math.max(1, Math.ceil(q * count));
  let seen = 0;
  for (const [bucket, n] of buckets) {
    seen += n;
    if (seen >= rank) return bucketValue(bucket);
  }
  return bucketValue(buckets[buckets.length - 1][0]);
}

/** What one event does to the statistics, given the task's status as the stats view last saw it. */
export interface StatsChange {
  status?: TaskStatus;
  counters: Record<string, number>;
  /** Processing time of a task that just completed, in ms. */
  processingMs?: number;
  /** When the task finished (ms since epoch, the event's time), for throughput. */
  finishedAt?: number;
}

const STATUS_COUNTER: Record<TaskStatus, string> = {
  queued: "queued_tasks",
  processing: "processing_tasks",
  completed: "completed_tasks",
  failed: "failed_tasks",
};

function move(from: TaskStatus | undefined, to: TaskStatus): Record<string, number> {
  if (from === to) return {};
  const counters: Record<string, number> = { [STATUS_COUNTER[to]]: 1 };
  if (from) counters[STATUS_COUNTER[from]] = -1;
  return counters;
}

/**
 * Pure: the change one event makes to the stats view. The projection writes changes as
 * increments (HINCRBY), so a batch never reads the counters, only the statuses of its tasks.
 */
export function statsChange(previous: TaskStatus | undefined, event: StoredEvent): StatsChange {
  switch (event.type) {
    case "task.queued":
      return {
        status: "queued",
        counters: { total_requests: previous ? 0 : 1, ...move(previous, "queued") },
      };
    case "task.reprocess_requested":
      return { status: "queued", counters: { reprocessed_tasks: 1, ...move(previous, "queued") } };
    case "task.started":
      return { status: "processing", counters: move(previous, "processing") };
    case "step.started":
    case "scenes.generated":
    case "callback.attempted":
    case "task.dead_letter_deleted":
      return { counters: {} };
    case "callback.delivered":
      return { counters: { callbacks_delivered: 1 } };
    case "callback.failed":
      return { counters: { callbacks_failed: 1 } };
    case "step.completed":
      return {
        counters: {
          [`step:${event.data.step}:ms`]: Math.round(event.data.duration_ms),
          [`step:${event.data.step}:count`]: 1,
        },
      };
    case "task.completed":
      return {
        status: "completed",
        counters: {
          ...move(previous, "completed"),
          processing_ms: Math.round(event.data.duration_ms),
          processing_count: 1,
        },
        processingMs: Math.round(event.data.duration_ms),
        finishedAt: Date.parse(event.at),
      };
    case "task.failed":
      if (!event.data.final) return { counters: {} };
      return {
        status: "failed",
        counters: move(previous, "failed"),
        finishedAt: Date.parse(event.at),
      };
    case "task.dead_lettered":
      return {
        status: "failed",
        counters: { dead_lettered_tasks: 1, ...move(previous, "failed") },
      };
    default: {
      const unknown: never = event;
      throw new Error(`Unhandled event ${JSON.stringify(unknown)}`);
    }
  }
}

/** The event types that change the stats view (the others give an empty change). */
export const STATS_EVENTS = [
  "task.queued",
  "task.reprocess_requested",
  "task.started",
  "step.completed",
  "task.completed",
  "task.failed",
  "task.dead_lettered",
  "callback.delivered",
  "callback.failed",
] as const;

/** The second (since epoch) a finish time in ms falls in: the throughput hash's field. */
export const finishSecond = (finishedAtMs: number) => Math.floor(finishedAtMs / 1000);
/** The minute (since epoch) a finish time in ms falls in: the per-minute series' field. */
export const finishMinute = (finishedAtMs: number) => Math.floor(finishedAtMs / 60_000);

/** The fields of a minute's hash that one finish adds to (the `minutes` hash gets `finished`). */
export function minuteFields(change: StatsChange): Record<string, number> {
  const fields: Record<string, number> = {
    [change.status === "failed" ? "failed" : "completed"]: 1,
  };
  if (change.processingMs !== undefined) fields[`ms:${durationBucket(change.processingMs)}`] = 1;
  return fields;
}

/** Pure: the minutes kept after adding some: every minute MINUTE_WINDOW before the newest goes. */
export function trimMinutes<T>(minutes: Record<string, T>): Record<string, T> {
  const keys = Object.keys(minutes).map(Number);
  if (keys.length === 0) return minutes;
  const floor = Math.max(...keys) - MINUTE_WINDOW;
  return Object.fromEntries(Object.entries(minutes).filter(([m]) => Number(m) >= floor));
}

/**
 * Pure: the throughput window after adding finish seconds: every second older than
 * FINISHED_WINDOW_S before the newest one is dropped. The result depends only on the multiset of
 * finish times folded so far, never on how they were batched, so the rebuild equals live.
 */
export function trimFinished(finished: Record<string, number>): Record<string, number> {
  const seconds = Object.keys(finished).map(Number);
  if (seconds.length === 0) return finished;
  const floor = Math.max(...seconds) - FINISHED_WINDOW_S;
  return Object.fromEntries(Object.entries(finished).filter(([s]) => Number(s) >= floor));
}

/** The whole stats view in memory: what its keys hold. */
export interface StatsState {
  counters: Record<string, number>;
  /** task id -> status (in Redis one key per task, expiring with VIEW_RETENTION_S). */
  status: Record<string, TaskStatus>;
  /** Processing-time histogram: durationBucket -> completions. */
  durations: Record<string, number>;
  /** Finish second -> tasks finished in it, the last FINISHED_WINDOW_S seconds. */
  finished: Record<string, number>;
  /** Finish minute -> that minute's hash (`completed`, `failed`, `ms:<bucket>`), the last hour. */
  minutes: Record<string, Record<string, number>>;
}

export function initialStats(): StatsState {
  return { counters: {}, status: {}, durations: {}, finished: {}, minutes: {} };
}

function addMinute(state: StatsState["minutes"], change: StatsChange, finishedAt: number) {
  const minute = String(finishMinute(finishedAt));
  let fields = state[minute] ?? {};
  for (const [field, n] of Object.entries(minuteFields(change))) fields = add(fields, field, n);
  return trimMinutes({ ...state, [minute]: fields });
}

const add = (record: Record<string, number>, field: string | number, n: number) => ({
  ...record,
  [field]: (record[field] ?? 0) + n,
});

/** Pure: folds one event into the stats view, with the same change the projection writes. */
export function evolveStats(state: StatsState, event: StoredEvent): StatsState {
  const change = statsChange(state.status[event.task_id], event);
  let counters = state.counters;
  for (const [field, n] of Object.entries(change.counters)) counters = add(counters, field, n);
  const id = event.task_id;
  return {
    counters,
    status: change.status ? { ...state.status, [id]: change.status } : state.status,
    durations: change.processingMs === undefined
      ? state.durations
      : add(state.durations, durationBucket(change.processingMs), 1),
    finished: change.finishedAt === undefined
      ? state.finished
      : trimFinished(add(state.finished, finishSecond(change.finishedAt), 1)),
    minutes: change.finishedAt === undefined
      ? state.minutes
      : addMinute(state.minutes, change, change.finishedAt),
  };
}
