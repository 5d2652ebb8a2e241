import type { RedisClient } from "../redis/client.ts";
import type { z } from "zod";
import type { EventStore } from "../event_store.ts";
import { type StoredEvent, TaskEventSchema, type TaskEventType } from "../events.ts";
import type { Keys } from "../keys.ts";
import type { Partitions } from "../partitions.ts";

/** A Redis write command, applied by the projection script together with the checkpoint. */
export type Op = (string | number)[];

/** Arguments per pipeline round when writes are sent without the projection script. */
const PIPELINE_ARGS = 20_000;

/**
 * Sends writes in order, outside the projection script (a rebuild's bulk fold, which nobody
 * reads yet): pipelined in rounds of about PIPELINE_ARGS arguments, so that no command of a big
 * batch waits behind the rest of it past the connection's command timeout.
 */
export async function applyWrites(redis: RedisClient, ops: Op[]): Promise<void> {
  for (let i = 0; i < ops.length;) {
    const pipeline = redis.pipeline();
    let args = 0;
    for (; i < ops.length && (args === 0 || args + ops[i].length <= PIPELINE_ARGS); i++) {
      const [command, ...rest] = ops[i];
      pipeline.call(String(command), ...rest);
      args += ops[i].length;
    }
    for (const [error] of (await pipeline.exec()) ?? []) if (error) throw error;
  }
}

/** Where a plan reads the views' current state and writes: one generation of views. */
export interface PlanContext {
  redis: RedisClient;
  /** The generation's view prefix: `{vp}:view`, or `{vp}:view@N` after rebuilds. */
  prefix: string;
  viewTtlS: number;
}

/** What a projection's HTTP handler may read. */
export interface RouteContext {
  redis: RedisClient;
  /** Partition 0's keys and store; a route finds its own partition in `partitions`. */
  keys: Keys;
  store: EventStore;
  partitions: Partitions;
  now: () => Date;
  streamRetentionMs: number;
}

/** A GET endpoint that answers from a projection's view, declared once for Hono and OpenAPI. */
export interface ProjectionRoute {
  /** OpenAPI style (`/task/{task_id}`); the Hono path (`/task/:task_id`) is derived from it. */
  path: string;
  summary: string;
  /** Path parameters, as documented. */
  params?: z.ZodObject;
  /**
   * Query parameters, as documented: the HTTP layer parses the query string with it (400 naming
   * each bad field) and passes the result to `handle`.
   */
  query?: z.ZodObject;
  response: { schema: z.ZodType; description: string };
  /** Documented problem+json responses besides 200. */
  problems: Partial<Record<400 | 404 | 503, string>>;
  /**
   * Reads the view. A ProblemError (a 404, say) is answered as problem+json; any other failure
   * is a Redis failure, answered 503 by the HTTP layer.
   */
  handle(context: RouteContext, params: Record<string, string>, query?: unknown): Promise<unknown>;
}

/**
 * One projection: a pure fold of task events into a view (`initialState`, `evolve`, `handles`),
 * where that view lives in Redis (`ownedKeys`, `plan`) and, optionally, how HTTP reads it
 * (`route`). Its `name` is also its consumer group, checkpoint and lease name in generation 0.
 */
export interface ProjectionDefinition<Name extends string = string, State = unknown> {
  name: Name;
  /** The event types that change the view; `evolve` returns the state as is for any other. */
  handles: readonly TaskEventType[];
  /** The state before the first event: null for a view kept per task or per video. */
  initialState(): State;
  /** Pure: the same events always give the same state (times come from events, not clocks). */
  evolve(state: State, event: StoredEvent): State;
  /** Every key pattern (or key) this projection writes under a generation's view prefix. */
  ownedKeys(prefix: string): string[];
  /** The writes that fold `events` (handled ones only) into the view, reading its state first. */
  plan(context: PlanContext, events: StoredEvent[]): Promise<Op[]>;
  route?: ProjectionRoute;
}

/**
 * Declares a projection, checking it against ProjectionDefinition while keeping its own name and
 * state types (the registry derives the projection names from them).
 */
export function defineProjection<const Name extends string, State>(
  definition: ProjectionDefinition<Name, State>,
): ProjectionDefinition<Name, State> {
  return definition;
}

/** Every event type, for projections that fold them all. */
export const ALL_EVENT_TYPES: readonly TaskEventType[] = TaskEventSchema.options.map((o) =>
  o.shape.type.value
);

export function canHandle(projection: { handles: readonly string[] }, event: StoredEvent) {
  return projection.handles.includes(event.type);
}

/** The state after `events`, from the initial state: what a rebuild from the log arrives at. */
export function fold<State>(
  projection: ProjectionDefinition<string, State>,
  events: StoredEvent[],
) {
  return events.reduce((state, e) => projection.evolve(state, e), projection.initialState());
}

const unique = (values: string[]) => [...new Set(values)];

/**
 * The plan of a view kept as one JSON string per document (a task, a video): loads the documents
 * the batch touches in one MGET, folds the batch into them, and sets each changed one with the
 * view TTL. `keyOf` gives an event's document key, or null when the event touches none.
 */
export async function planJsonDocuments<View>(
  { redis, viewTtlS }: PlanContext,
  events: StoredEvent[],
  { keyOf, evolve }: {
    keyOf: (event: StoredEvent) => string | null;
    evolve: (view: View | null, event: StoredEvent) => View | null;
  },
): Promise<Op[]> {
  const touched = events.flatMap((e) => {
    const key = keyOf(e);
    return key === null ? [] : [{ key, event: e }];
  });
  const views = await loadJson<View>(redis, unique(touched.map((t) => t.key)));
  for (const { key, event } of touched) {
    const next = evolve(views.get(key) ?? null, event);
    if (next) views.set(key, next);
  }
  return [...views].map(([key, view]) => ["SET", key, JSON.stringify(view), "EX", viewTtlS]);
}

/** Loads JSON views by key; missing keys give undefined. */
async function loadJson<T>(redis: RedisClient, keys: string[]): Promise<Map<string, T>> {
  const map = new Map<string, T>();
  if (keys.length === 0) return map;
  const values = await redis.mget(...keys);
  keys.forEach((key, i) => {
    const value = values[i];
    if (value !== null) map.set(key, JSON.parse(value) as T);
  });
  return map;
}
