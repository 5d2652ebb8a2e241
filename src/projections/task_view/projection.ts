import type { RedisClient } from "../../redis/client.ts";
import { z } from "zod";
import { ProblemError } from "../../errors.ts";
import type { EventStore } from "../../event_store.ts";
import { compareIds } from "../../events.ts";
import type { Keys } from "../../keys.ts";
import { currentViews } from "../../queries.ts";
import { ALL_EVENT_TYPES, defineProjection, planJsonDocuments } from "../definition.ts";
import {
  catchUpTaskView,
  evolveTaskView,
  initialTaskView,
  type TaskView,
  taskViewKey,
  TaskViewSchema,
} from "./view.ts";

/** The task's view as projected, or null when not projected yet (or expired). */
export async function readTaskView(
  redis: RedisClient,
  keys: Keys,
  taskId: string,
): Promise<TaskView | null> {
  const raw = await redis.get(taskViewKey((await currentViews(redis, keys)).prefix, taskId));
  return raw ? JSON.parse(raw) as TaskView : null;
}

/**
 * The task's true state, even while the projector is behind: the projected view and the task's
 * timeline in one round trip; when the timeline has events the view has not folded
 * (or there is no view), those events are read from the log and folded on the view with the
 * projection's own evolve. Null for an unknown (or expired) task.
 */
export async function readFreshTaskView(
  store: EventStore,
  taskId: string,
): Promise<TaskView | null> {
  const { redis, keys } = store;
  const timeline = keys.taskTimeline(taskId);
  // One round trip: the view generation, the view in the generation this process last saw (it
  // changes only with a rebuild's swap), and the timeline, read after the view so that it holds
  // every event the view has folded.
  const guess = seenGeneration.get(keys.viewGeneration) ?? 0;
  const replies = await redis.pipeline()
    .get(keys.viewGeneration)
    .get(taskViewKey(keys.views(guess).prefix, taskId))
    .lrange(timeline, 0, -1)
    .exec() as [Error | null, unknown][];
  for (const [error] of replies) if (error) throw error;
  const generation = Number(replies[0][1] ?? 0);
  let raw = replies[1][1] as string | null;
  let ids = replies[2][1] as string[];
  if (generation !== guess) {
    seenGeneration.set(keys.viewGeneration, generation);
    const [[viewError, view], [idsError, latest]] = await redis.pipeline()
      .get(taskViewKey(keys.views(generation).prefix, taskId))
      .lrange(timeline, 0, -1)
      .exec() as [Error | null, unknown][];
    if (viewError || idsError) throw viewError ?? idsError;
    [raw, ids] = [view as string | null, latest as string[]];
  }
  const view = raw ? JSON.parse(raw) as TaskView : null;
  const last = ids.at(-1);
  if (last === undefined) return view;
  const folded = view?.last_event_id ?? null;
  if (folded !== null && compareIds(last, folded) <= 0) return view;
  const missing = folded === null ? ids : ids.filter((id) => compareIds(id, folded) > 0);
  return catchUpTaskView(taskId, view, await store.events(missing));
}

/** The view generation each partition's readers last found (the generation key → its value). */
const seenGeneration = new Map<string, number>();

/** A task's status view, one JSON document per task; every event counts (`event_count`). */
export const taskView = defineProjection({
  name: "task-view",
  handles: ALL_EVENT_TYPES,
  initialState: (): TaskView | null => null,
  evolve: (view, event) => evolveTaskView(view ?? initialTaskView(event.task_id), event),
  ownedKeys: (prefix) => [taskViewKey(prefix, "*")],
  plan(context, events) {
    return planJsonDocuments<TaskView>(context, events, {
      keyOf: (event) => taskViewKey(context.prefix, event.task_id),
      evolve: (view, event) => evolveTaskView(view ?? initialTaskView(event.task_id), event),
    });
  },
  route: {
    path: "/task/{task_id}",
    summary: "A task's status, steps, result and error",
    params: z.object({ task_id: z.string() }),
    response: { schema: TaskViewSchema, description: "The task" },
    problems: { 404: "Unknown task" },
    async handle({ partitions }, { task_id }) {
      // The id names its partition; an id no partition can hold is an unknown task.
      const partition = partitions.ofTask(task_id);
      if (!partition) throw new ProblemError(404, "Task not found", `No task "${task_id}"`);
      // The projected view, caught up with the task's events the projector has not reached.
      const view = await readFreshTaskView(partition.store, task_id);
      if (view) return view;
      throw new ProblemError(404, "Task not found", `No task "${task_id}"`);
    },
  },
});
