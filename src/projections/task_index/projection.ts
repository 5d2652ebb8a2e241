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
  GRAM_BLOCK,
  GRAM_SLOTS,
  gramBits,
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
 * is one ZREM and one ZADD, a new task a ZADD per set, its doc, prompt, position and one BITFIELD
 * setting its trigram bits, and a trimmed task the reverse (its bits cleared, its bitmap block
 * deleted with the block's last task).
 */
async function planTaskIndex(
  { redis, prefix, viewTtlS }: PlanContext,
  events: StoredEvent[],
): Promise<Op[]> {
  const keys = taskIndexKeys(prefix);
  const ids = [...new Set(events.map((e) => e.task_id))];
  const [[mark, nextPosition], raw] = await Promise.all([
    redis.hmget(keys.meta, "watermark", "next_position"),
    redis.hmget(keys.docs, ...ids),
  ]);
  const stored = new Map<string, IndexDoc>();
  ids.forEach((id, i) => raw[i] && stored.set(id, JSON.parse(raw[i]!) as IndexDoc));
  let watermark = mark === null ? null : Number(mark);
  let position = Number(nextPosition ?? 0);
  const next = new Map<string, IndexedTask | undefined>();
  for (const event of events) {
    watermark = Math.max(watermark ?? -Infinity, eventTime(event));
    const floor = trimFloor(watermark, viewTtlS * 1000);
    const id = event.task_id;
    // A stored task's prompt is not read back unless it is trimmed (below).
    const current = next.has(id)
      ? next.get(id)
      : stored.has(id)
      ? { ...stored.get(id)!, prompt: null }
      : undefined;
    const task = indexTask(current, event, { floor, position });
    if (task && !current) position += 1;
    next.set(id, task);
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
  const trimmed = [...next].filter(([id, task]) => !task && stored.has(id)).map(([id]) => id);
  const [prompts, blockCounts] = trimmed.length
    ? await Promise.all([redis.hmget(keys.prompts, ...trimmed), redis.hgetall(keys.gramBlocks)])
    : [[], {}];
  const trimmedPrompts = new Map(trimmed.map((id, i) => [id, prompts[i] ?? null]));
  const ops: Op[] = [];
  const blocks = new Map<number, number>();
  const bits = new GramBits();
  for (const [id, task] of next) {
    const before = stored.get(id);
    ops.push(...entryWrites(keys, id, before, task));
    if (before && !task) {
      const bitsOf = gramBits(before.position, trimmedPrompts.get(id) ?? null);
      bits.add(bitsOf, -1);
      const { block } = bitsOf;
      ops.push(["HDEL", keys.positions, before.position]);
      blocks.set(block, (blocks.get(block) ?? 0) - 1);
    } else if (task && !before) {
      const bitsOf = gramBits(task.position, task.prompt);
      bits.add(bitsOf, 1);
      const { block } = bitsOf;
      ops.push(["HSET", keys.positions, task.position, task.member]);
      blocks.set(block, (blocks.get(block) ?? 0) + 1);
    }
  }
  ops.push(...bits.writes(keys));
  for (const [block, change] of blocks) {
    if (change === 0) continue;
    const count = Number((blockCounts as Record<string, string>)[block] ?? 0) + change;
    // Counts only fall when tasks are trimmed, when the stored counts were read.
    if (change < 0 && count <= 0) {
      ops.push(["HDEL", keys.gramBlocks, block], ["DEL", keys.grams(block)]);
    } else ops.push(["HINCRBY", keys.gramBlocks, block, change]);
  }
  if (
    watermark !== null &&
    (String(watermark) !== mark || String(position) !== (nextPosition ?? "0") || mark === null)
  ) {
    ops.push(["HSET", keys.meta, "watermark", String(watermark), "next_position", position]);
  }
  return ops;
}

/** Subcommands per BITFIELD op: project.lua unpacks an op onto Lua's stack (8,000 slots). */
const BITFIELD_CHUNK = 1_000;

/** 32-bit words in one row of a block of the trigram bitmaps. */
const ROW_WORDS = GRAM_BLOCK / 32;

/**
 * A batch's trigram bit changes, summed per word: a new task's bits are still 0 (its position is
 * new) and a trimmed task's are 1, so setting a bit is adding its value and clearing subtracting
 * it, with no carry; one BITFIELD INCRBY per 64-bit word then changes many tasks' bits at once
 * (a bulk fold of thousands of tasks writes each row's words once, not each bit). A task's bits
 * all sit in the same column word of their rows, so the sums are kept per column word: one
 * GRAM_SLOTS-long array each.
 */
class GramBits {
  /** Block -> column word -> the delta of that word in each row. */
  readonly #blocks = new Map<number, Map<number, Float64Array>>();

  add({ block, column, slots }: ReturnType<typeof gramBits>, sign: 1 | -1) {
    if (slots.length === 0) return;
    let words = this.#blocks.get(block);
    if (!words) this.#blocks.set(block, words = new Map());
    const word = column >>> 5;
    let rows = words.get(word);
    if (!rows) words.set(word, rows = new Float64Array(GRAM_SLOTS));
    const value = sign * 2 ** (31 - (column & 31));
    for (const slot of slots) rows[slot] += value;
  }

  writes(keys: ReturnType<typeof taskIndexKeys>): Op[] {
    const ops: Op[] = [];
    for (const [block, words] of this.#blocks) {
      // Pairs of 32-bit words as one signed 64-bit delta (Redis wraps it like the sum it is).
      const pairs = [...new Set([...words.keys()].map((w) => w >>> 1))].sort((a, b) => a - b);
      const subcommands: (string | number)[] = [];
      for (let slot = 0; slot < GRAM_SLOTS; slot++) {
        for (const pair of pairs) {
          const high = words.get(pair * 2)?.[slot] ?? 0;
          const low = words.get(pair * 2 + 1)?.[slot] ?? 0;
          if (high === 0 && low === 0) continue;
          const delta = BigInt.asIntN(64, (BigInt(high) << 32n) + BigInt(low));
          subcommands.push("INCRBY", "i64", (slot * ROW_WORDS + pair * 2) * 32, delta.toString());
        }
      }
      for (let i = 0; i < subcommands.length; i += BITFIELD_CHUNK * 4) {
        ops.push([
          "BITFIELD",
          keys.grams(block),
          "OVERFLOW",
          "WRAP",
          ...subcommands.slice(i, i + BITFIELD_CHUNK * 4),
        ]);
      }
    }
    return ops;
  }
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
    async handle({ redis, partitions }, _params, query) {
      // Every partition's index (each in its own view generation), merged newest first.
      const prefixes = await Promise.all(
        partitions.list.map(async (p) => (await currentViews(redis, p.keys)).prefix),
      );
      return queryTaskIndex(redis, prefixes, query as TaskListQuery);
    },
  },
});
