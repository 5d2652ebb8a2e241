import type { RedisClient } from "../src/redis/client.ts";
import type { StoredEvent } from "../src/events.ts";
import { applyWrites } from "../src/projections/definition.ts";
import { taskIndex } from "../src/projections/task_index/projection.ts";
import { taskIndexKeys } from "../src/projections/task_index/view.ts";

/** Applies the task index's plan to `events` in batches of `size`, as the projector would. */
export async function projectIndex(
  redis: RedisClient,
  prefix: string,
  events: StoredEvent[],
  { size = 500, viewTtlS = 86_400 } = {},
) {
  for (let i = 0; i < events.length; i += size) {
    const batch = events.slice(i, i + size).filter((e) => taskIndex.handles.includes(e.type));
    if (!batch.length) continue;
    await applyWrites(redis, await taskIndex.plan({ redis, prefix, viewTtlS }, batch));
  }
}

const byKey = <T>(record: Record<string, T>) =>
  Object.fromEntries(Object.entries(record).sort(([a], [b]) => a < b ? -1 : 1));

/** What the index's keys hold in Redis, in indexContents' shape (sets sorted by key). */
export async function storedIndex(redis: RedisClient, prefix: string) {
  const keys = taskIndexKeys(prefix);
  const sets: Record<string, string[]> = {};
  let cursor = "0";
  const found: string[] = [];
  do {
    const [next, batch] = await redis.scan(cursor, "MATCH", keys.pattern, "COUNT", 1000);
    cursor = next;
    found.push(...batch);
  } while (cursor !== "0");
  const grams: Record<string, number[]> = {};
  for (const key of found) {
    const type = await redis.type(key);
    if (type === "zset") sets[key] = await redis.zrange(key, 0, -1);
    if (type === "string") {
      const offsets = setBits(await redis.getBuffer(key));
      if (offsets.length) grams[key] = offsets;
    }
  }
  return {
    sets: byKey(sets),
    docs: await redis.hgetall(keys.docs),
    prompts: await redis.hgetall(keys.prompts),
    meta: await redis.hgetall(keys.meta),
    positions: await redis.hgetall(keys.positions),
    grams: byKey(grams),
    blocks: await redis.hgetall(keys.gramBlocks),
  };
}

/** The offsets of a bitmap's set bits (Redis numbers bits from each byte's most significant). */
function setBits(bytes: Uint8Array | null): number[] {
  const offsets: number[] = [];
  bytes?.forEach((byte, i) => {
    for (let b = 0; b < 8; b++) if (byte & (0x80 >> b)) offsets.push(i * 8 + b);
  });
  return offsets;
}

/** indexContents with its sets sorted by key, to compare with storedIndex. */
export function expectedIndex<
  T extends { sets: Record<string, string[]>; grams: Record<string, number[]> },
>(contents: T): T {
  return { ...contents, sets: byKey(contents.sets), grams: byKey(contents.grams) };
}
