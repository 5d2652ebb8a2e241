import type { Redis } from "ioredis";
import type { StoredEvent } from "../events.ts";
import { type Keys, projectionGroup, type ProjectionName, type ViewKeys } from "../keys.ts";
import { evolveStats } from "./stats.ts";
import { evolveTaskView, initialTaskView, type TaskStatus, type TaskView } from "./task_view.ts";
import { evolveVideoView, type VideoView } from "./video_view.ts";

/** A Redis write command, applied by the projection script together with the checkpoint. */
export type Op = (string | number)[];

export interface Projection {
  name: ProjectionName;
  /** Its consumer group, checkpoint and lease name in its view generation. */
  group: string;
  generation: number;
  /** The writes that fold `events` into the view, reading the view's current state first. */
  plan(events: StoredEvent[]): Promise<Op[]>;
  /** Every key pattern or key this projection writes, so a rebuild can drop them. */
  ownedKeys: string[];
}

export interface ProjectionContext {
  redis: Redis;
  keys: Keys;
  viewTtlS: number;
  /** Which generation of views to write (0 unless a rebuild made newer ones). */
  generation?: number;
}

const unique = (values: string[]) => [...new Set(values)];

/** Loads JSON views by key; missing keys give undefined. */
async function loadJson<T>(redis: Redis, keys: string[]): Promise<Map<string, T>> {
  const map = new Map<string, T>();
  if (keys.length === 0) return map;
  const values = await redis.mget(...keys);
  keys.forEach((key, i) => {
    const value = values[i];
    if (value !== null) map.set(key, JSON.parse(value) as T);
  });
  return map;
}

function taskViewProjection(
  { redis, keys, viewTtlS }: Context,
): Omit<Projection, "group" | "generation"> {
  return {
    name: "task-view",
    ownedKeys: [keys.taskView("*")],
    async plan(events) {
      const viewKeys = unique(events.map((e) => keys.taskView(e.task_id)));
      const views = await loadJson<TaskView>(redis, viewKeys);
      for (const event of events) {
        const key = keys.taskView(event.task_id);
        views.set(key, evolveTaskView(views.get(key) ?? initialTaskView(event.task_id), event));
      }
      return [...views].map(([key, view]) => ["SET", key, JSON.stringify(view), "EX", viewTtlS]);
    },
  };
}

function videoViewProjection(
  { redis, keys, viewTtlS }: Context,
): Omit<Projection, "group" | "generation"> {
  return {
    name: "video-scenes",
    ownedKeys: [keys.videoView("*")],
    async plan(events) {
      const completed = events.filter((e) => e.type === "task.completed");
      const viewKeys = unique(completed.map((e) => keys.videoView(e.data.video_id)));
      const views = await loadJson<VideoView>(redis, viewKeys);
      for (const event of completed) {
        const key = keys.videoView(event.data.video_id);
        const next = evolveVideoView(views.get(key) ?? null, event);
        if (next) views.set(key, next);
      }
      return [...views].map(([key, view]) => ["SET", key, JSON.stringify(view), "EX", viewTtlS]);
    },
  };
}

function statsProjection({ redis, keys }: Context): Omit<Projection, "group" | "generation"> {
  return {
    name: "stats",
    ownedKeys: [keys.stats, keys.statsStatus, keys.statsDurations, keys.statsFinished],
    async plan(events) {
      const taskIds = unique(events.map((e) => e.task_id));
      const known = await redis.hmget(keys.statsStatus, ...taskIds);
      const status = new Map<string, TaskStatus>();
      taskIds.forEach((id, i) => known[i] && status.set(id, known[i] as TaskStatus));
      const counters: Record<string, number> = {};
      const changed = new Set<string>();
      const ops: Op[] = [];
      for (const event of events) {
        const change = evolveStats(status.get(event.task_id), event);
        for (const [field, n] of Object.entries(change.counters)) {
          counters[field] = (counters[field] ?? 0) + n;
        }
        if (change.status) {
          status.set(event.task_id, change.status);
          changed.add(event.task_id);
        }
        if (change.processingMs !== undefined) {
          ops.push(["ZADD", keys.statsDurations, change.processingMs, event.task_id]);
        }
        if (change.finishedAt !== undefined) {
          ops.push(["ZADD", keys.statsFinished, change.finishedAt, event.task_id]);
        }
      }
      // Zero nets are written too, so a field exists iff some event touched it, whatever the
      // batch boundaries: a rebuild then gives the very same hash.
      for (const [field, n] of Object.entries(counters)) {
        ops.push(["HINCRBY", keys.stats, field, n]);
      }
      const statusPairs = [...changed].flatMap((id) => [id, status.get(id)!]);
      if (statusPairs.length) ops.push(["HSET", keys.statsStatus, ...statusPairs]);
      return ops;
    },
  };
}

type Context = { redis: Redis; keys: ViewKeys; viewTtlS: number };

/** The projections the worker runs, one consumer group each, for one generation of views. */
export function createProjections(context: ProjectionContext): Projection[] {
  const generation = context.generation ?? 0;
  const inner = { ...context, keys: context.keys.views(generation) };
  return [taskViewProjection(inner), videoViewProjection(inner), statsProjection(inner)].map((
    p,
  ) => ({
    ...p,
    generation,
    group: projectionGroup(p.name, generation),
  }));
}
