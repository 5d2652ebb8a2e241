import type { StoredEvent } from "../events.ts";
import type { TaskStatus } from "./task_view.ts";

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

/** Pure: the change one event makes to the stats view. */
export function evolveStats(previous: TaskStatus | undefined, event: StoredEvent): StatsChange {
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
