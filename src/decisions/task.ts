import type { StoredEvent } from "../events.ts";

/** What a task worker knows of a task from its events. */
export interface TaskState {
  /** The current run's outcome is in the log: nothing is left for a worker to do. */
  done: boolean;
  /** Outputs of the steps the current run completed, so no attempt repeats them. */
  outputs: Record<string, Record<string, unknown>>;
  /** Attempts the current run began (its task.started events). */
  attempts: number;
  /** When the current run's first attempt started, for the task's processing time. */
  startedAt?: string;
  /** The video revision an earlier run generated: a reprocess stores over it. */
  storedRevision?: number;
}

export const initialTaskState = (): TaskState => ({ done: false, outputs: {}, attempts: 0 });

/** Folds one event of a task into what a worker knows. Pure. */
export function evolveTask(state: TaskState, event: StoredEvent): TaskState {
  switch (event.type) {
    case "task.reprocess_requested":
      // A new run starts from scratch, but keeps the revision its scenes are stored as.
      return { ...initialTaskState(), storedRevision: state.storedRevision };
    case "task.started":
      return { ...state, attempts: state.attempts + 1, startedAt: state.startedAt ?? event.at };
    case "step.completed":
      return { ...state, outputs: { ...state.outputs, [event.data.step]: event.data.output } };
    case "scenes.generated":
      return { ...state, done: true, storedRevision: event.data.result.video_revision };
    case "task.completed":
    case "task.dead_lettered":
      return { ...state, done: true };
    case "task.failed":
      return event.data.final ? { ...state, done: true } : state;
    default:
      return state;
  }
}

export type TaskDecision =
  /** The outcome is already in the log (the entry was re-added): acknowledge, repeat nothing. */
  | { type: "acknowledge" }
  /** Attempts ran out without an outcome (the worker kept being killed): dead-letter it. */
  | { type: "dead_letter"; attempts: number; error: string }
  /** Run the steps not yet completed, as attempt `attempt`. */
  | {
    type: "run";
    attempt: number;
    outputs: TaskState["outputs"];
    startedAt?: string;
    storedRevision?: number;
  };

/** What a worker does with a delivered task, given the task's events (none on a first delivery). */
export function decideTask(
  history: StoredEvent[],
  { maxAttempts }: { maxAttempts: number },
): TaskDecision {
  const state = history.reduce(evolveTask, initialTaskState());
  if (state.done) return { type: "acknowledge" };
  if (state.attempts >= maxAttempts) {
    return {
      type: "dead_letter",
      attempts: state.attempts,
      error: "Attempts exhausted after repeated interruptions",
    };
  }
  return {
    type: "run",
    attempt: state.attempts + 1,
    outputs: { ...state.outputs },
    startedAt: state.startedAt,
    storedRevision: state.storedRevision,
  };
}
