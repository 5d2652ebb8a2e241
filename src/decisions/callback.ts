import { compareIds, entryType, fieldsToRecord, type StoredEvent } from "../events.ts";
import type { VideoRequest } from "../webhook.ts";

const OUTCOMES = new Set(["task.completed", "task.failed"]);

/**
 * Whether a raw event entry may need a callback: a final outcome whose task has a callback_url
 * (events that do not say are looked up). The rest are acknowledged without reading anything.
 */
export function announcesOutcome(fields: string[]): boolean {
  if (!OUTCOMES.has(entryType(fields) ?? "")) return false;
  try {
    const data = JSON.parse(fieldsToRecord(fields).data ?? "{}");
    return data.callback !== false && (data.final ?? true) !== false;
  } catch {
    return true;
  }
}

/** Whether a decoded event is a task's final outcome (completed, or failed for good). */
export function isFinalOutcome(event: StoredEvent): boolean {
  return event.type === "task.completed" || (event.type === "task.failed" && event.data.final);
}

/** The callback body for a task outcome. */
export function callbackBody(outcome: StoredEvent, request: Partial<VideoRequest>) {
  const completed = outcome.type === "task.completed" ? outcome.data : null;
  return {
    status: completed ? "completed" : "failed",
    task_id: outcome.task_id,
    video_id: request.video_id,
    chat_id: request.chat_id ?? null,
    user_id: request.user_id,
    is_revision: request.is_revision ?? false,
    scenes: completed?.result.scenes ?? [],
    image_url: completed?.result.image_url ?? null,
    error: outcome.type === "task.failed" ? outcome.data.error : null,
  };
}

export type CallbackDecision =
  /** Nothing to send: no callback_url, not a final outcome, or already delivered or given up. */
  | { type: "acknowledge" }
  /** POST `body` to `url` as attempt `attempt`, with a `webhook-id` fixed for this outcome. */
  | { type: "deliver"; url: string; webhookId: string; body: string; attempt: number }
  /**
   * Too old to announce (older than CALLBACK_MAX_AGE_S): recorded as `callback.failed` with the
   * reason EXPIRED, not sent; `attempts` is how many were made before.
   */
  | { type: "expire"; webhookId: string; attempts: number; ageMs: number };

/** The short reason `callback.failed` carries for an outcome that was never sent: too old. */
export const EXPIRED = "expired";

/** How old an outcome may be when sent, as of `now`. */
export interface CallbackLimits {
  now: Date;
  maxAgeMs: number;
}

/**
 * What the callback sender does with an outcome event, given the task's events and its request
 * (null when it is gone). The `webhook-id` is fixed per outcome event, so receivers can drop
 * repeats and a redelivery counts the attempts already made. With `limits`, an outcome older
 * than `maxAgeMs` (by its event time) expires instead: a receiver should never learn of a result
 * long after it stopped waiting (a callback sender started late, or a backlog after an outage).
 */
export function decideCallback(
  outcome: StoredEvent,
  history: StoredEvent[],
  request: VideoRequest | null,
  limits?: CallbackLimits,
): CallbackDecision {
  if (!isFinalOutcome(outcome) || !request?.callback_url) return { type: "acknowledge" };
  const webhookId = `${outcome.task_id}.${outcome.id}`;
  const mine = history.filter((e) =>
    compareIds(e.id, outcome.id) > 0 && "webhook_id" in e.data && e.data.webhook_id === webhookId
  );
  if (mine.some((e) => e.type === "callback.delivered" || e.type === "callback.failed")) {
    return { type: "acknowledge" };
  }
  const attempts = mine.filter((e) => e.type === "callback.attempted").length;
  const ageMs = limits ? limits.now.getTime() - Date.parse(outcome.at) : 0;
  if (limits && ageMs > limits.maxAgeMs) return { type: "expire", webhookId, attempts, ageMs };
  return {
    type: "deliver",
    url: request.callback_url,
    webhookId,
    body: JSON.stringify(callbackBody(outcome, request)),
    attempt: attempts + 1,
  };
}
