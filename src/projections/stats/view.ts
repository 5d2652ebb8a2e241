import type { StoredEvent } from "../../events.ts";
import type { TaskStatus } from "../task_view/view.ts";

/** The stats view's keys under a generation's view prefix (`{vp}:view:stats…` in generation 0). */
export function statsKeys(prefix: string) {
  return {
    /** Counters and per-step sums (hash). */
    counters: `${prefix}:stats`,
    /** task id -> status as the stats projection last saw it, to move counters between states. */
    status: `${prefix}:stats:status`,
    /** task id -> processing time in ms, for percentiles (zset). */
    durations: `${prefix}:stats:durations`,
    /** task id -> completion time in ms, for throughput (zset). */
    finished: `${prefix}:stats:finished`,
  };
}

/** What one event does to the statistics, given the task's status as the stats view last saw it. */
export interface StatsChange {
  status?: TaskStatus;
  counters: Record<string, number>;
  /** Processing time of a task that just completed, in ms. */
  processingMs?: number;
  /** When the task finished (ms since epoch), for throughput. */
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

/** The whole stats view in memory: what its four keys hold. */
export interface StatsState {
  counters: Record<string, number>;
  status: Record<string, TaskStatus>;
  durations: Record<string, number>;
  finished: Record<string, number>;
}

export function initialStats(): StatsState {
  return { counters: {}, status: {}, durations: {}, finished: {} };
}

/** Pure: folds one event into the stats view, with the same change the projection writes. */
export function evolveStats(state: StatsState, event: StoredEvent): StatsState {
  const change = statsChange(state.status[event.task_id], event);
  const counters = { ...state.counters };
  for (const [field, n] of Object.entries(change.counters)) {
    counters[field] = (counters[field] ?? 0) + n;
  }
  const id = event.task_id;
  return {
    counters,
    status: change.status ? { ...state.status, [id]: change.status } : state.status,
    durations: change.processingMs === undefined
      ? state.durations
      : { ...state.durations, [id]: change.processingMs },
    finished: change.finishedAt === undefined
      ? state.finished
      : { ...state.finished, [id]: change.finishedAt },
  };
}
