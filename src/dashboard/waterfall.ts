/**
 * A task run's timeline as a waterfall: the wait in the queue, then each step attempt from its
 * `step.started` to its `step.completed` (or the `task.failed` that ended it), placed on the run's
 * time axis. A pure function of the events, like the views.
 */
import { currentRun, type StoredEvent } from "../events.ts";

export interface Bar {
  label: string;
  attempt: number | null;
  /** ms from the run's start. */
  startMs: number;
  /** ms from the run's start; null while it runs. */
  endMs: number | null;
  state: "done" | "failed" | "running" | "waiting";
  note?: string;
}

export interface Waterfall {
  run: number;
  /** When the run began (queued or reprocess requested). */
  startedAt: string | null;
  bars: Bar[];
  /** ms from the run's start to its last event. */
  spanMs: number;
}

export function waterfall(history: StoredEvent[]): Waterfall {
  const events = currentRun(history);
  const first = events[0];
  if (!first) return { run: 1, startedAt: null, bars: [], spanMs: 0 };
  const origin = Date.parse(first.at);
  const at = (e: StoredEvent) => Date.parse(e.at) - origin;
  const run = first.type === "task.reprocess_requested" ? first.data.run : 1;
  const bars: Bar[] = [];
  const open = new Map<string, Bar>();
  let queue: Bar | null = {
    label: "queue",
    attempt: null,
    startMs: 0,
    endMs: null,
    state: "waiting",
  };
  bars.push(queue);
  for (const e of events) {
    switch (e.type) {
      case "task.started":
        if (queue) {
          queue.endMs = at(e);
          queue.state = "done";
          queue = null;
        }
        break;
      case "step.started": {
        const bar: Bar = {
          label: e.data.step,
          attempt: e.data.attempt,
          startMs: at(e),
          endMs: null,
          state: "running",
        };
        open.set(`${e.data.step}#${e.data.attempt}`, bar);
        bars.push(bar);
        break;
      }
      case "step.completed": {
        const key = `${e.data.step}#${e.data.attempt}`;
        const bar = open.get(key);
        if (bar) {
          // The step's own measure; the event time includes the write.
          bar.endMs = Math.max(bar.startMs, at(e));
          bar.state = "done";
          bar.note = `${e.data.duration_ms} ms`;
          open.delete(key);
        }
        break;
      }
      case "task.failed": {
        for (const [key, bar] of open) {
          if (e.data.step && !key.startsWith(`${e.data.step}#`)) continue;
          bar.endMs = at(e);
          bar.state = "failed";
          bar.note = e.data.error;
          open.delete(key);
        }
        break;
      }
      default:
        break;
    }
  }
  const last = events[events.length - 1];
  const spanMs = Math.max(1, at(last), ...bars.map((b) => b.endMs ?? 0));
  if (queue && queue.endMs === null && events.some((e) => e.type === "task.completed")) {
    queue.state = "done";
  }
  return { run, startedAt: first.at, bars, spanMs };
}
