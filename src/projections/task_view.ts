import type { StepName, StoredEvent, TaskResult } from "../events.ts";

export type TaskStatus = "queued" | "processing" | "completed" | "failed";

export interface TaskView {
  task_id: string;
  video_id: string | null;
  user_id: string | null;
  is_revision: boolean;
  status: TaskStatus;
  current_step: StepName | null;
  attempts: number;
  created_at: string | null;
  updated_at: string | null;
  steps: Partial<Record<StepName, { duration_ms: number; attempt: number }>>;
  result: TaskResult | null;
  error: { message: string; step: StepName | null; retryable: boolean; attempt: number } | null;
  retrying: boolean;
  dead_letter_entry: string | null;
  callback: CallbackState | null;
  /** 1, then one more for each reprocess (replay or dead-letter redrive). */
  run: number;
  event_count: number;
  last_event_id: string | null;
}

export interface CallbackState {
  state: "retrying" | "delivered" | "failed";
  webhook_id: string;
  attempts: number;
  last_status_code: number | null;
  last_error: string | null;
}

export function initialTaskView(taskId: string): TaskView {
  return {
    task_id: taskId,
    video_id: null,
    user_id: null,
    is_revision: false,
    status: "queued",
    current_step: null,
    attempts: 0,
    created_at: null,
    updated_at: null,
    steps: {},
    result: null,
    error: null,
    retrying: false,
    dead_letter_entry: null,
    callback: null,
    run: 1,
    event_count: 0,
    last_event_id: null,
  };
}

/** Folds one event into a task's view. Pure: the same events always give the same view. */
export function evolveTaskView(view: TaskView, event: StoredEvent): TaskView {
  const next: TaskView = {
    ...view,
    updated_at: event.at,
    event_count: view.event_count + 1,
    last_event_id: event.id,
  };
  switch (event.type) {
    case "task.queued":
      return {
        ...next,
        status: "queued",
        video_id: event.data.video_id,
        user_id: event.data.user_id,
        is_revision: event.data.is_revision,
        created_at: view.created_at ?? event.at,
      };
    case "task.reprocess_requested":
      return {
        ...next,
        status: "queued",
        run: event.data.run,
        current_step: null,
        attempts: 0,
        steps: {},
        error: null,
        retrying: false,
        dead_letter_entry: null,
        callback: null,
      };
    case "task.started":
      return {
        ...next,
        status: "processing",
        attempts: Math.max(view.attempts, event.data.attempt),
        retrying: false,
      };
    case "step.started":
      return { ...next, current_step: event.data.step };
    case "step.completed":
      return {
        ...next,
        steps: {
          ...view.steps,
          [event.data.step]: { duration_ms: event.data.duration_ms, attempt: event.data.attempt },
        },
      };
    case "scenes.generated":
      return { ...next, current_step: null, retrying: false };
    case "task.completed":
      return {
        ...next,
        status: "completed",
        current_step: null,
        result: event.data.result,
        error: null,
        retrying: false,
      };
    case "task.failed":
      return {
        ...next,
        status: event.data.final ? "failed" : "processing",
        retrying: !event.data.final,
        error: {
          message: event.data.error,
          step: event.data.step ?? null,
          retryable: event.data.retryable,
          attempt: event.data.attempt,
        },
      };
    case "task.dead_lettered":
      return { ...next, status: "failed", dead_letter_entry: event.data.dead_letter_entry };
    case "callback.attempted":
      return {
        ...next,
        callback: {
          state: event.data.retry_in_ms === null ? "failed" : "retrying",
          webhook_id: event.data.webhook_id,
          attempts: event.data.attempt,
          last_status_code: event.data.status_code,
          last_error: event.data.error,
        },
      };
    case "callback.delivered":
      return {
        ...next,
        callback: {
          state: "delivered",
          webhook_id: event.data.webhook_id,
          attempts: event.data.attempts,
          last_status_code: event.data.status_code,
          last_error: null,
        },
      };
    case "callback.failed":
      return {
        ...next,
        callback: {
          state: "failed",
          webhook_id: event.data.webhook_id,
          attempts: event.data.attempts,
          last_status_code: view.callback?.last_status_code ?? null,
          last_error: event.data.error,
        },
      };
    default: {
      const unknown: never = event;
      throw new Error(`Unhandled event ${JSON.stringify(unknown)}`);
    }
  }
}

/** A task's view from its whole timeline. */
export function foldTaskView(taskId: string, events: StoredEvent[]): TaskView {
  return events.reduce(evolveTaskView, initialTaskView(taskId));
}
