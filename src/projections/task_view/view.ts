import { z } from "zod";
import { compareIds, StepName, type StoredEvent } from "../../events.ts";
import { TaskResultSchema } from "../../pipeline/scene.ts";

export const TaskStatusSchema = z.enum(["queued", "processing", "completed", "failed"]);
export type TaskStatus = z.infer<typeof TaskStatusSchema>;

const CallbackStateSchema = z.object({
  state: z.enum(["retrying", "delivered", "failed"]),
  webhook_id: z.string(),
  attempts: z.number().int(),
  last_status_code: z.number().int().nullable(),
  last_error: z.string().nullable(),
});
export type CallbackState = z.infer<typeof CallbackStateSchema>;

/** A task's status view, as stored and as GET /task/{task_id} returns it. */
export const TaskViewSchema = z.object({
  task_id: z.string(),
  video_id: z.string().nullable(),
  user_id: z.string().nullable(),
  is_revision: z.boolean(),
  status: TaskStatusSchema,
  current_step: StepName.nullable(),
  attempts: z.number().int(),
  created_at: z.string().nullable(),
  updated_at: z.string().nullable(),
  steps: z.record(z.string(), z.object({ duration_ms: z.number(), attempt: z.number().int() })),
  result: TaskResultSchema.nullable(),
  error: z.object({
    message: z.string(),
    step: StepName.nullable(),
    retryable: z.boolean(),
    attempt: z.number().int(),
  }).nullable(),
  retrying: z.boolean(),
  dead_letter_entry: z.string().nullable(),
  callback: CallbackStateSchema.nullable().describe(
    "Delivery of the outcome to callback_url, when one was given",
  ),
  run: z.number().int().describe("1, then one more per reprocess"),
  event_count: z.number().int(),
  last_event_id: z.string().nullable(),
});
export type TaskView = z.infer<typeof TaskViewSchema>;

/** A task's view key under a generation's view prefix: `{vp}:view:task:<id>` in generation 0. */
export const taskViewKey = (prefix: string, taskId: string) => `${prefix}:task:${taskId}`;

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

/**
 * A task's status after an event: the one place that says how events move a task between
 * statuses (the task view and the task index both use it).
 */
export function taskStatusAfter(status: TaskStatus, event: StoredEvent): TaskStatus {
  switch (event.type) {
    case "task.queued":
    case "task.reprocess_requested":
      return "queued";
    case "task.started":
      return "processing";
    case "task.completed":
      return "completed";
    case "task.failed":
      return event.data.final ? "failed" : "processing";
    case "task.dead_lettered":
      return "failed";
    default:
      return status;
  }
}

/** The event types that can change a task's status (taskStatusAfter keeps it for the others). */
export const STATUS_EVENTS = [
  "task.queued",
  "task.reprocess_requested",
  "task.started",
  "task.completed",
  "task.failed",
  "task.dead_lettered",
] as const;

/** Folds one event into a task's view. Pure: the same events always give the same view. */
export function evolveTaskView(view: TaskView, event: StoredEvent): TaskView {
  const next: TaskView = {
    ...view,
    status: taskStatusAfter(view.status, event),
    updated_at: event.at,
    event_count: view.event_count + 1,
    last_event_id: event.id,
  };
  switch (event.type) {
    case "task.queued":
      return {
        ...next,
        video_id: event.data.video_id,
        user_id: event.data.user_id,
        is_revision: event.data.is_revision,
        created_at: view.created_at ?? event.at,
      };
    case "task.reprocess_requested":
      return {
        ...next,
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
        current_step: null,
        result: event.data.result,
        error: null,
        retrying: false,
      };
    case "task.failed":
      return {
        ...next,
        retrying: !event.data.final,
        error: {
          message: event.data.error,
          step: event.data.step ?? null,
          retryable: event.data.retryable,
          attempt: event.data.attempt,
        },
      };
    case "task.dead_lettered":
      return { ...next, dead_letter_entry: event.data.dead_letter_entry };
    case "task.dead_letter_deleted":
      // Deleted for good: nothing left to redrive (the task stays failed).
      return view.dead_letter_entry === event.data.dead_letter_entry
        ? { ...next, dead_letter_entry: null }
        : next;
    case "callback.attempted":
    case "callback.delivered":
    case "callback.failed":
      return { ...next, callback: evolveCallback(view.callback, event) };
    default: {
      const unknown: never = event;
      throw new Error(`Unhandled event ${JSON.stringify(unknown)}`);
    }
  }
}

type CallbackEvent = Extract<StoredEvent, { type: `callback.${string}` }>;

/** The callback delivery state after a callback.* event. */
function evolveCallback(previous: CallbackState | null, event: CallbackEvent): CallbackState {
  switch (event.type) {
    case "callback.attempted":
      return {
        state: event.data.retry_in_ms === null ? "failed" : "retrying",
        webhook_id: event.data.webhook_id,
        attempts: event.data.attempt,
        last_status_code: event.data.status_code,
        last_error: event.data.error,
      };
    case "callback.delivered":
      return {
        state: "delivered",
        webhook_id: event.data.webhook_id,
        attempts: event.data.attempts,
        last_status_code: event.data.status_code,
        last_error: null,
      };
    case "callback.failed":
      return {
        state: "failed",
        webhook_id: event.data.webhook_id,
        attempts: event.data.attempts,
        // A failure after the last attempt keeps that attempt's status code.
        last_status_code: previous?.last_status_code ?? null,
        last_error: event.data.error,
      };
  }
}

/** A task's view from its whole timeline. */
export function foldTaskView(taskId: string, events: StoredEvent[]): TaskView {
  return events.reduce(evolveTaskView, initialTaskView(taskId));
}

/**
 * The view brought up to date with events of the task the projector has not folded yet: those of
 * `events` after the view's last event, folded with the same evolve. A view projected from the
 * first k events and caught up with the rest is the fold of all of them, so a reader sees what the
 * projector will store once it gets there. Without a view, the fold of `events`.
 */
export function catchUpTaskView(
  taskId: string,
  view: TaskView | null,
  events: StoredEvent[],
): TaskView {
  if (view === null) return foldTaskView(taskId, events);
  const last = view.last_event_id;
  return events.filter((e) => last === null || compareIds(e.id, last) > 0)
    .reduce(evolveTaskView, view);
}
