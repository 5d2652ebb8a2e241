/**
 * What the SSE streams send and when a task's stream is over: pure functions of events.
 */
import type { StoredEvent } from "../events.ts";

/**
 * An event as public reads show it (GET /task/{task_id}/events and the streams): the operator-only
 * `detail` of callback errors, which names hosts and addresses, is left out.
 */
export function publicEvent({ id, type, task_id, at, data }: StoredEvent) {
  const { detail: _detail, ...shown } = data as Record<string, unknown>;
  return { id, type, task_id, at, data: shown };
}

const encoder = new TextEncoder();

/**
 * The SSE frame of an event: `id` the stream entry id, `event` the type, `data` the public event
 * as one line of JSON (JSON.stringify escapes every newline inside strings).
 */
export function eventFrame(event: StoredEvent, id: string = event.id): Uint8Array {
  const json = JSON.stringify(publicEvent(event));
  return encoder.encode(`id: ${id}\nevent: ${event.type}\ndata: ${json}\n\n`);
}

/** A frame for a named event without an id (so the client's Last-Event-ID stays as it was). */
export function namedFrame(name: string, data: unknown, id?: string | null): Uint8Array {
  const idLine = id ? `id: ${id}\n` : "";
  return encoder.encode(`${idLine}event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
}

/** Results of delivering an outcome to callback_url (an expired outcome is `callback.failed`). */
const CALLBACK_RESULTS = new Set(["callback.delivered", "callback.failed"]);

/**
 * Whether a task's stream is over: its current run has a final outcome (completed, or failed for
 * good and dead-lettered) and, when the outcome says the task has a callback_url
 * (`callback: true`), the callback's result. A reprocess request starts over. A final
 * `task.failed` is always appended together with `task.dead_lettered` (one script), so a failed
 * task's stream ends after the latter. Outcome events without the `callback` flag are taken as
 * having no callback.
 */
export class StreamEnd {
  #outcome: "completed" | "failed" | "dead" | null = null;
  #callback = false;
  #callbackDone = false;

  /** Folds one event in; returns whether the stream is over after it. */
  see(event: StoredEvent): boolean {
    const type: string = event.type;
    if (type === "task.reprocess_requested") {
      this.#outcome = null;
      this.#callback = false;
      this.#callbackDone = false;
    } else if (event.type === "task.completed") {
      this.#outcome = "completed";
      this.#callback = event.data.callback === true;
    } else if (event.type === "task.failed" && event.data.final) {
      this.#outcome = "failed";
      this.#callback = event.data.callback === true;
    } else if (event.type === "task.dead_lettered") {
      this.#outcome = "dead";
    } else if (this.#outcome && CALLBACK_RESULTS.has(type)) {
      this.#callbackDone = true;
    }
    return this.ended;
  }

  get ended(): boolean {
    if (this.#outcome !== "completed" && this.#outcome !== "dead") return false;
    return !this.#callback || this.#callbackDone;
  }
}

/**
 * Whether an event changes its task's status (the `?status_changes=true` filter): queued (new or
 * reprocessed), processing (the run's first `task.started`: a retry or a reclaimed task is already
 * processing), completed, failed (a final `task.failed`; the `task.dead_lettered` that follows it
 * changes nothing more). Steps, retries and callbacks do not.
 */
export function changesStatus(event: StoredEvent): boolean {
  switch (event.type) {
    case "task.queued":
    case "task.reprocess_requested":
    case "task.completed":
      return true;
    case "task.started":
      return event.data.attempt <= 1;
    case "task.failed":
      return event.data.final;
    case "task.dead_lettered":
    case "task.dead_letter_deleted":
    case "step.started":
    case "step.completed":
    case "scenes.generated":
    case "callback.attempted":
    case "callback.delivered":
    case "callback.failed":
      return false;
    default: {
      const never: never = event;
      return Boolean(never);
    }
  }
}
