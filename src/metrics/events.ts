import { EXPIRED } from "../decisions/callback.ts";
import type { NewEvent } from "../events.ts";
import type { Metrics } from "./registry.ts";

/** One settle that succeeded, as consumers/delivery.ts saw it. */
export interface Settled {
  mode: "append" | "ack" | "dead";
  events: readonly NewEvent[];
  /** The work entry's append time (ms, from its id), for the queue wait. */
  entryMs: number;
  /** Whether this is the delivery's first task.started with attempt 1 (a queue wait to observe). */
  firstStart: boolean;
  /** How long the current attempt has run (ms), for a callback attempt's duration. */
  attemptMs: number | null;
}

type Loose = { type: string; at: string; data: Record<string, unknown> };

/**
 * The metrics an appended batch of events moves: task outcomes, step and task durations, queue
 * wait, callback deliveries. Called once per successful settle, so every event a consumer of this
 * process appended counts once (a settle refused by the fence appended nothing and counts nothing).
 */
export function observeSettled(metrics: Metrics, settled: Settled): void {
  if (settled.mode === "dead") metrics.taskOutcomes.inc({ outcome: "dead_lettered" });
  for (const raw of settled.events) {
    const { type, at, data } = raw as Loose;
    switch (type) {
      case "task.started":
        if (settled.firstStart) {
          metrics.queueWait.observe(Math.max(0, Date.parse(at) - settled.entryMs) / 1000);
        }
        break;
      case "step.completed":
        metrics.stepDuration.observe({ step: String(data.step) }, Number(data.duration_ms) / 1000);
        break;
      case "task.completed":
        metrics.taskOutcomes.inc({ outcome: "completed" });
        metrics.taskDuration.observe(Number(data.duration_ms) / 1000);
        break;
      case "task.failed":
        metrics.taskOutcomes.inc({ outcome: data.final ? "failed" : "retried" });
        break;
      case "callback.delivered":
        callback(metrics, "delivered", settled.attemptMs);
        break;
      case "callback.attempted":
        // The last attempt's record comes with callback.failed, which counts it.
        if (data.retry_in_ms !== null && data.retry_in_ms !== undefined) {
          callback(metrics, "retried", settled.attemptMs);
        }
        break;
      case "callback.failed":
        if (data.error === EXPIRED) callback(metrics, "expired", null);
        else callback(metrics, "failed", settled.attemptMs);
        break;
    }
  }
}

function callback(metrics: Metrics, result: string, attemptMs: number | null) {
  metrics.callbacks.inc({ result });
  if (attemptMs !== null) metrics.callbackDuration.observe({ result }, attemptMs / 1000);
}
