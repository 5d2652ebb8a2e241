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
 * last timeline entry in one round trip; when the timeline has events the view has not folded
 * (or there is no view), those events are read from the log and folded on the view with the
 * projection's own evolve. Null for an unknown (or expired) task.
 */
export async function readFreshTaskView(
  store: EventStore,
  taskId: string,
): Promise<TaskView | null> {
  const { redis, keys } = store;
  const timeline = keys.taskTimeline(taskId);
  const views = await currentViews(redis, keys);
  const [[viewError, raw], [lastError, last]] = await redis.pipeline()
    .get(taskViewKey(views.prefix, taskId))
    .lindex(timeline, -1)
    .exec() as [Error | null, string | null][];
  if (viewError || lastError) throw viewError ?? lastError;
  const view = raw ? JSON.parse(raw) as TaskView : null;
  if (last === null) return view;
  const folded = view?.last_event_id ?? null;
  if (folded !== null && compareIds(last, folded) <= 0) return view;
  const ids = await redis.lrange(timeline, 0, -1);
  const missing = folded === null ? ids : ids.filter((id) => compareIds(id, folded) > 0);
  return catchUpTaskView(taskId, view, await store.events(missing));
}

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
