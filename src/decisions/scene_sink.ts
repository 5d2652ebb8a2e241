import { compareIds, type EventOf, type StoredEvent } from "../events.ts";
import type { SceneRow } from "../pipeline/scene.ts";

export type SceneSinkDecision =
  /** The task already completed or failed for good after this event: nothing to store. */
  | { type: "acknowledge" }
  /** Storing was begun `attempts` times and never finished (the sink kept being killed). */
  | { type: "dead_letter"; attempts: number; error: string }
  /** Store the scenes, as attempt `attempt`. */
  | { type: "persist"; attempt: number };

/**
 * What the scene sink does with a `scenes.generated` event (entry `entryId`), given the task's
 * events (only those after it count; none on a first delivery).
 */
export function decideSceneSink(
  entryId: string,
  history: StoredEvent[],
  { maxAttempts }: { maxAttempts: number },
): SceneSinkDecision {
  const after = history.filter((e) => compareIds(e.id, entryId) > 0);
  if (
    after.some((e) => e.type === "task.completed" || (e.type === "task.failed" && e.data.final))
  ) {
    return { type: "acknowledge" };
  }
  const begun = after.filter((e) => e.type === "step.started" && e.data.step === "persist").length;
  if (begun >= maxAttempts) {
    return { type: "dead_letter", attempts: begun, error: "Storing scenes kept being interrupted" };
  }
  return { type: "persist", attempt: begun + 1 };
}

/** Scene rows for a generated result. */
export function sceneRows(generated: EventOf<"scenes.generated">): SceneRow[] {
  const { result, video_id, user_id } = generated.data;
  return result.scenes.map((scene) => ({
    task_id: generated.task_id,
    video_id,
    user_id,
    revision: result.video_revision,
    image_url: result.image_url,
    ...scene,
  }));
}

/** The task's processing time at `now`: from its run's first start (or the event) until now. */
export function processingMs(generated: EventOf<"scenes.generated">, now: Date): number {
  return Math.max(0, now.getTime() - Date.parse(generated.data.started_at ?? generated.at));
}
