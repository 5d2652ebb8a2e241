import type { Redis } from "ioredis";
import type { Keys } from "../keys.ts";
import type { Projection } from "./projections.ts";

/**
 * Drops every view, checkpoint and lease of the given projections and destroys their consumer
 * groups, so the next projector start folds the task event stream again from its first entry.
 * Run it with the projectors stopped.
 */
export async function resetProjections(redis: Redis, keys: Keys, projections: Projection[]) {
  for (const projection of projections) {
    for (const pattern of projection.ownedKeys) await deleteMatching(redis, pattern);
    await dropProjectionGroup(redis, keys, projection.group);
  }
}

/** Destroys a projection's consumer group with its checkpoint and lease (views stay). */
export async function dropProjectionGroup(redis: Redis, keys: Keys, group: string) {
  await redis.del(keys.checkpoint(group), keys.lease(group));
  try {
    await redis.xgroup("DESTROY", keys.eventStream, group);
  } catch {
    // No stream yet: nothing to destroy.
  }
}

/** Deletes the keys matching a SCAN pattern (a plain key name matches itself). */
export async function deleteMatching(redis: Redis, pattern: string): Promise<number> {
  let cursor = "0";
  let deleted = 0;
  do {
    const [next, found] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1_000);
    cursor = next;
    if (found.length) deleted += await redis.unlink(...found);
  } while (cursor !== "0");
  return deleted;
}
