import type { RedisClient } from "../../redis/client.ts";
import { z } from "zod";
import { ProblemError } from "../../errors.ts";
import type { Keys } from "../../keys.ts";
import { currentViews } from "../../queries.ts";
import { ALL_EVENT_TYPES, defineProjection, planJsonDocuments } from "../definition.ts";
import {
  evolveTaskView,
  foldTaskView,
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
    async handle({ redis, partitions }, { task_id }) {
      // The id names its partition; an id no partition can hold is an unknown task.
      const partition = partitions.ofTask(task_id);
      if (!partition) throw new ProblemError(404, "Task not found", `No task "${task_id}"`);
      const { keys, store } = partition;
      const projected = await readTaskView(redis, keys, task_id);
      if (projected) return projected;
      // Not projected yet (or expired): fold its timeline from the log, same evolve function.
      const events = await store.timeline(task_id);
      if (events.length) return foldTaskView(task_id, events);
      throw new ProblemError(404, "Task not found", `No task "${task_id}"`);
    },
  },
});
