import type { RedisClient } from "../redis/client.ts";
import type { StoredEvent } from "../events.ts";
import { type Keys, projectionGroup } from "../keys.ts";
import { canHandle, type Op } from "./definition.ts";
import { stats } from "./stats/projection.ts";
import { taskIndex } from "./task_index/projection.ts";
import { taskView } from "./task_view/projection.ts";
import { videoScenes } from "./video_scenes/projection.ts";

/**
 * Every projection, one consumer group each. The projector runner, the rebuild and the HTTP
 * layer (routes and OpenAPI) all take them from here: a new projection is its folder plus a line.
 */
export const PROJECTIONS = [taskView, videoScenes, stats, taskIndex] as const;

export type ProjectionName = (typeof PROJECTIONS)[number]["name"];
/** The projections' names: their consumer groups (and checkpoint names) in generation 0. */
export const PROJECTION_NAMES: readonly ProjectionName[] = PROJECTIONS.map((p) => p.name);

/** A projection bound to Redis and one generation of views, as a projector or rebuild runs it. */
export interface Projection {
  name: ProjectionName;
  /** Its consumer group and checkpoint name in its view generation. */
  group: string;
  generation: number;
  /** The writes that fold `events` into the view, reading the view's current state first. */
  plan(events: StoredEvent[]): Promise<Op[]>;
  /** Every key pattern or key this projection writes, so a rebuild can drop them. */
  ownedKeys: string[];
}

export interface ProjectionContext {
  redis: RedisClient;
  keys: Keys;
  viewTtlS: number;
  /** Which generation of views to write (0 unless a rebuild made newer ones). */
  generation?: number;
}

/**
 * The lease of a generation's projections (in a partition): one process at a time folds them all,
 * `{vp}:lease:projections` (`…:projections@N` after rebuilds).
 */
export function projectionLease(keys: Keys, generation: number): string {
  return keys.lease(projectionGroup("projections", generation));
}

/** The projections the worker runs, one consumer group each, for one generation of views. */
export function createProjections(context: ProjectionContext): Projection[] {
  const generation = context.generation ?? 0;
  const { prefix } = context.keys.views(generation);
  const planContext = { redis: context.redis, prefix, viewTtlS: context.viewTtlS };
  return PROJECTIONS.map((definition): Projection => ({
    name: definition.name,
    group: projectionGroup(definition.name, generation),
    generation,
    ownedKeys: definition.ownedKeys(prefix),
    plan(events) {
      // Only what the projection handles: a batch of other events plans no writes.
      const handled = events.filter((e) => canHandle(definition, e));
      return handled.length ? definition.plan(planContext, handled) : Promise.resolve([]);
    },
  }));
}
