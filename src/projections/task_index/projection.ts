import { type StoredEvent } from "../../events.ts";
import { currentViews } from "../../queries.ts";
import { defineProjection, type Op, type PlanContext } from "../definition.ts";
import {
  queryTaskIndex,
  type TaskListQuery,
  TaskListQuerySchema,
  TaskListSchema,
} from "./query.ts";
import {
  eventTime,
  evolveTaskIndex,
  type IndexDoc,
  type IndexedTask,
  indexSets,
  indexTask,
  initialTaskIndex,
  memberFloor,
  memberTaskId,
  TASK_INDEX_EVENTS,
  taskIndexKeys,
  toDoc,
  trimFloor,
} from "./view.ts";

/**
 * The batch's index writes: the batch's tasks are read (one HMGET) and folded with the same
 * `indexTask` as the pure fold; then every task created before the trim floor (the newest event
 * time less VIEW_RETENTION_S) is dropped, in the batch or already stored (one ZRANGE BYLEX). Each
 * task's writes are the difference between its stored entry and its new one, so a status change
 * is one ZREM and one ZADD.
 */
async function planTaskIndex(
  { redis, prefix, viewTtlS }: PlanContext,
  events: StoredEvent[],
): Promise<Op[]> {
  const keys = taskIndexKeys(prefix);
  const ids = [...new Set(events.map((e) => e.task_id))];
  const [mark, raw] = await Promise.all([
    redis.hget(keys.meta, "watermark"),
    redis.hmget(keys.docs, ...ids),
  ]);
  const stored = new Map<string, IndexDoc>();
  ids.forEach((id, i) => raw[i] && stored.set(id, JSON.parse(raw[i]!) as IndexDoc));
  let watermark = mark === null ? null : Number(mark);
  const next = new Map<string, IndexedTask | undefined>();
  for (const event of events) {
    watermark = Math.max(watermark ?? -Infinity, eventTime(event));
    const floor = trimFloor(watermark, viewTtlS * 1000);
    const id = event.task_id;
    // A stored task's prompt is not read back: only a new task's prompt is written.
    const current = next.has(id)
      ? next.get(id)
      : stored.has(id)
      ? { ...stored.get(id)!, prompt: null }
      : undefined;
    next.set(id, indexTask(current, event, floor));
  }
  const lowest = memberFloor(trimFloor(watermark, viewTtlS * 1000));
  for (const [id, task] of next) if (task && task.member < lowest) next.set(id, undefined);
  // Stored tasks that fell below the floor, besides the batch's own.
  const expired = (await redis.zrange(keys.all, `(${lowest}`, "-", "BYLEX", "REV"))
    .map(memberTaskId).filter((id) => !stored.has(id));
  if (expired.length) {
    const docs = await redis.hmget(keys.docs, ...expired);
    expired.forEach((id, i) => {
      if (docs[i]) stored.set(id, JSON.parse(docs[i]!) as IndexDoc);
      next.set(id, undefined);
    });
  }
  const ops: Op[] = [];
  for (const [id, task] of next) ops.push(...entryWrites(keys, id, stored.get(id), task));
  if (watermark !== null && String(watermark) !== mark) {
    ops.push(["HSET", keys.meta, "watermark", String(watermark)]);
  }
  return ops;
}

/** The writes that turn a task's stored entry (or none) into its new one (or none). */
function entryWrites(
  keys: ReturnType<typeof taskIndexKeys>,
  id: string,
  before: IndexDoc | undefined,
  after: IndexedTask | undefined,
): Op[] {
  const ops: Op[] = [];
  const was = new Set(before ? indexSets(keys, before) : []);
  const is = new Set(after ? indexSets(keys, after) : []);
  for (const set of was) if (!is.has(set)) ops.push(["ZREM", set, before!.member]);
  for (const set of is) if (!was.has(set)) ops.push(["ZADD", set, 0, after!.member]);
  if (after) {
    const doc = JSON.stringify(toDoc(after));
    if (!before || JSON.stringify(before) !== doc) ops.push(["HSET", keys.docs, id, doc]);
    if (!before && after.prompt !== null) ops.push(["HSET", keys.prompts, id, after.prompt]);
  } else if (before) {
    ops.push(["HDEL", keys.docs, id], ["HDEL", keys.prompts, id]);
  }
  return ops;
}

/** Tasks by creation time and status, with search keys: the dashboard's task list. */
export const taskIndex = defineProjection({
  name: "task-index",
  handles: TASK_INDEX_EVENTS,
  initialState: () => initialTaskIndex(),
  evolve: evolveTaskIndex,
  ownedKeys: (prefix) => [taskIndexKeys(prefix).pattern],
  plan: planTaskIndex,
  route: {
    path: "/tasks",
    summary: "Tasks newest first: filter by status and creation time, search, cursor pages",
    query: TaskListQuerySchema,
    response: { schema: TaskListSchema, description: "One page of tasks, newest first" },
    problems: { 400: "A query parameter is invalid (`errors` names each)" },
    async handle({ redis, keys }, _params, query) {
      const { prefix } = await currentViews(redis, keys);
      return queryTaskIndex(redis, [prefix], query as TaskListQuery);
    },
  },
});
