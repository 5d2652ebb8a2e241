import type { RedisClient } from "../../redis/client.ts";
import { z } from "zod";
import { taskIndexGramsScript, taskIndexPageScript } from "../../redis/scripts.ts";
import { initialTaskView, type TaskView, taskViewKey, TaskViewSchema } from "../task_view/view.ts";
import { TaskStatusSchema } from "../task_view/view.ts";
import {
  GRAM_BLOCK,
  gramSlots,
  type IndexDoc,
  MEMBER_PATTERN,
  memberFloor,
  memberTaskId,
  memberTime,
  searchPrompt,
  taskIndexKeys,
} from "./view.ts";

/** Page sizes a query may ask for. */
export const MAX_PAGE = 100;
export const DEFAULT_PAGE = 25;
/**
 * Index members one page may look at, over all partitions and search keys, when it filters by
 * prompt or status: bounds the time a page holds Redis (about 2 µs a member with a prompt
 * check). A page that runs out of it holds fewer tasks than asked, with a next_cursor to go on.
 */
export const SCAN_BUDGET = 20_000;
/**
 * Candidates a prompt search through the trigram bitmaps checks at most (each a prompt read);
 * past it the needle narrows too little and the search walks the set instead, where matches are
 * then dense enough to fill a page quickly (or the walk's budget bounds the page).
 */
export const GRAM_CANDIDATES = 5_000;

/** What a search term is matched against; `any` tries the ids first, then the prompt. */
export const SearchFieldSchema = z.enum([
  "any",
  "task_id",
  "video_id",
  "user_id",
  "idempotency_key",
  "prompt",
]);
export type SearchField = z.infer<typeof SearchFieldSchema>;

/** A time as ms since the epoch or ISO-8601, as query strings carry it. */
const time = z.union([z.number(), z.string()]).transform((value, ctx) => {
  const ms = typeof value === "number" || /^\d+$/.test(value) ? Number(value) : Date.parse(value);
  if (!Number.isFinite(ms) || ms < 0 || ms >= 1e13) {
    ctx.addIssue({ code: "custom", message: "must be ms since the epoch or an ISO-8601 time" });
    return z.NEVER;
  }
  return Math.floor(ms);
});

/** GET /tasks's query, also what queryTaskIndex takes (numbers may come as strings). */
export const TaskListQuerySchema = z.object({
  status: TaskStatusSchema.optional().describe("Only tasks with this status now"),
  from: time.optional().describe("Created at or after (ms since the epoch, or ISO-8601)"),
  to: time.optional().describe("Created before (exclusive; ms since the epoch, or ISO-8601)"),
  q: z.string().trim().min(1).max(2_048).optional().describe(
    "Search: an exact task id, video id, user id or idempotency key; when none of those " +
      "matches, a substring of the prompt (case and runs of white space ignored)",
  ),
  field: SearchFieldSchema.default("any").describe("What `q` is matched against"),
  cursor: z.string().regex(MEMBER_PATTERN, "must be a next_cursor this route returned")
    .optional().describe("next_cursor of the previous page"),
  limit: z.coerce.number().int().min(1).max(MAX_PAGE).default(DEFAULT_PAGE)
    .describe(`Tasks per page, 1 to ${MAX_PAGE} (default ${DEFAULT_PAGE})`),
}).refine((q) => q.from === undefined || q.to === undefined || q.from < q.to, {
  message: "from must be before to",
  path: ["from"],
});
export type TaskListQuery = z.input<typeof TaskListQuerySchema>;
type ParsedQuery = z.output<typeof TaskListQuerySchema>;

/** GET /tasks: one page. */
export const TaskListSchema = z.object({
  items: z.array(TaskViewSchema).describe(
    "Newest first (by creation time, then task id); a task the task view has not projected " +
      "yet shows what the index knows (status, ids, created_at)",
  ),
  next_cursor: z.string().nullable().describe(
    "Pass as `cursor` for the next (older) page; null at the end. A page may hold fewer tasks " +
      "than `limit` and still have a cursor when a search looked at its budget of tasks",
  ),
  matched: z.array(SearchFieldSchema.exclude(["any"])).describe(
    "What `q` matched: the id kinds that hold it, else prompt; empty without `q`",
  ),
});
export type TaskList = z.infer<typeof TaskListSchema>;

type Matched = Exclude<SearchField, "any">;
const ID_FIELDS = ["task_id", "video_id", "user_id", "idempotency_key"] as const;

/** Where one walk reads: a sorted set of one partition, maybe filtered. */
interface Walk {
  prefix: string;
  source: string;
  status: string | null;
  needle: string;
}

/** One walk's result: members kept, newest first, and where it stopped early (or null). */
interface WalkResult {
  members: string[];
  stop: string | null;
}

/**
 * One page of the task index, newest first, over every partition's view prefix (one Redis key
 * space each; their results are merged by member, k-way). Validates the query (a ZodError for
 * bad input). Keyset pagination: `next_cursor` is the last member shown, the next page starts
 * below it, so tasks created meanwhile never shift a page and no task is shown twice.
 */
export async function queryTaskIndex(
  redis: RedisClient,
  viewPrefixes: string[],
  input: TaskListQuery,
): Promise<TaskList> {
  const query = TaskListQuerySchema.parse(input);
  const max = upperBound(query);
  const min = query.from === undefined ? "-" : `[${memberFloor(query.from)}`;
  const { walks, matched, direct } = await plan(redis, viewPrefixes, query);
  const budget = Math.max(query.limit, Math.floor(SCAN_BUDGET / Math.max(1, walks.length)));
  // One more than a page, so a full page knows whether anything follows.
  const results = await Promise.all(
    walks.map((walk) => runWalk(redis, walk, { max, min, limit: query.limit + 1, budget })),
  );
  // A task id match is one member, filtered here like a walk would.
  const exact = direct.filter(({ doc }) =>
    (query.status === undefined || doc.status === query.status) &&
    (max === "+" || doc.member < max.slice(1)) &&
    (min === "-" || doc.member >= min.slice(1))
  );
  results.push({ members: exact.map((d) => d.doc.member), stop: null });
  const page = merge(results, query.limit);
  const owner = new Map<string, string>();
  for (const [i, walk] of walks.entries()) {
    for (const m of results[i].members) owner.set(m, walk.prefix);
  }
  for (const { prefix, doc } of exact) owner.set(doc.member, prefix);
  return {
    items: await loadViews(redis, page.members, owner),
    next_cursor: page.next,
    matched,
  };
}

/** The exclusive upper bound: below the cursor and before `to`, whichever is lower. */
function upperBound(query: ParsedQuery): string {
  const bounds: string[] = [];
  if (query.cursor !== undefined) bounds.push(query.cursor);
  if (query.to !== undefined) bounds.push(memberFloor(query.to));
  if (bounds.length === 0) return "+";
  return `(${bounds.sort()[0]}`;
}

/** Which sets to walk in which partition, and what the search matched. */
async function plan(redis: RedisClient, prefixes: string[], query: ParsedQuery) {
  const walks: Walk[] = [];
  const direct: { prefix: string; doc: IndexDoc }[] = [];
  const statusOf = (prefix: string) =>
    query.status === undefined ? null : taskIndexKeys(prefix).status(query.status);
  const base = (prefix: string, needle = ""): Walk => {
    const keys = taskIndexKeys(prefix);
    const status = statusOf(prefix);
    // Walk the status set itself when there is one: nothing to check per member then.
    return { prefix, source: status ?? keys.all, status: null, needle };
  };
  if (query.q === undefined) {
    return { walks: prefixes.map((p) => base(p)), matched: [] as Matched[], direct };
  }
  const q = query.q;
  const fields: Matched[] = query.field === "any" ? [...ID_FIELDS] : [query.field];
  const idFields = fields.filter((f): f is (typeof ID_FIELDS)[number] => f !== "prompt");
  const matched = new Set<Matched>();
  if (idFields.length) {
    // One pipeline per partition: on a Redis Cluster a pipeline's keys must share a node.
    const replies = (await Promise.all(prefixes.map(async (prefix) => {
      const keys = taskIndexKeys(prefix);
      const pipeline = redis.pipeline();
      for (const field of idFields) {
        if (field === "task_id") pipeline.hget(keys.docs, q);
        else pipeline.exists(idSet(prefix, field, q));
      }
      return (await pipeline.exec()) ?? [];
    }))).flat();
    let i = 0;
    for (const prefix of prefixes) {
      for (const field of idFields) {
        const [error, value] = replies[i++];
        if (error) throw error;
        if (field === "task_id") {
          if (value) {
            direct.push({ prefix, doc: JSON.parse(value as string) as IndexDoc });
            matched.add(field);
          }
        } else if (value === 1) {
          walks.push({
            prefix,
            source: idSet(prefix, field, q),
            status: statusOf(prefix),
            needle: "",
          });
          matched.add(field);
        }
      }
    }
  }
  const prompt = query.field === "prompt" || (query.field === "any" && matched.size === 0);
  if (prompt) {
    const needle = searchPrompt(q);
    for (const prefix of prefixes) walks.push(base(prefix, needle));
    matched.add("prompt");
  }
  return { walks, matched: [...matched], direct };
}

function idSet(prefix: string, field: "video_id" | "user_id" | "idempotency_key", q: string) {
  const keys = taskIndexKeys(prefix);
  if (field === "video_id") return keys.video(q);
  if (field === "user_id") return keys.user(q);
  return keys.idempotency(q);
}

async function runWalk(
  redis: RedisClient,
  walk: Walk,
  bounds: { max: string; min: string; limit: number; budget: number },
): Promise<WalkResult> {
  if (walk.needle !== "") {
    const found = await gramSearch(redis, walk, bounds);
    if (found) return found;
  }
  const { max, min, limit, budget } = bounds;
  const keys = taskIndexKeys(walk.prefix);
  const [members, stop] = await taskIndexPageScript.run(redis, {
    keys: { source: walk.source, status: walk.status ?? walk.source, prompts: keys.prompts },
    args: {
      max,
      min,
      limit,
      budget,
      needle: walk.needle,
      check_status: walk.status === null ? "0" : "1",
    },
  }) as [string[], string];
  return { members, stop: stop === "" ? null : stop };
}

/**
 * A prompt search through the trigram bitmaps: exact and complete for the bounds, or null when
 * the needle is shorter than a trigram or leaves more than GRAM_CANDIDATES candidates.
 */
async function gramSearch(
  redis: RedisClient,
  walk: Walk,
  { max, min, limit }: { max: string; min: string; limit: number },
): Promise<WalkResult | null> {
  const slots = gramSlots(walk.needle);
  if (slots.length === 0) return null;
  const keys = taskIndexKeys(walk.prefix);
  const blocks = (await redis.hkeys(keys.gramBlocks)).map(Number).sort((a, b) => b - a);
  if (blocks.length === 0) return { members: [], stop: null };
  // The walk's source is the status set when filtering by status: check membership of it.
  const status = walk.source === keys.all ? null : walk.source;
  const [members, mark] = await taskIndexGramsScript.run(redis, {
    keys: { positions: keys.positions, prompts: keys.prompts, status: status ?? keys.all },
    args: {
      slots: slots.join(","),
      blocks: blocks.join(","),
      block_bits: GRAM_BLOCK,
      max,
      min,
      limit,
      needle: walk.needle,
      check_status: status === null ? "0" : "1",
      cap: GRAM_CANDIDATES,
    },
  }, { keys: blocks.map((b) => keys.grams(b)) }) as [string[], string];
  return mark === "too-many" ? null : { members, stop: null };
}

/**
 * Merges walks newest first. A walk that stopped early (its budget ran out) has only looked down
 * to its stop member: the page holds nothing below the highest such stop, and its cursor is that
 * stop when the page is not full, so the next page goes on from there.
 */
export function merge(
  results: WalkResult[],
  limit: number,
): { members: string[]; next: string | null } {
  const stops = results.flatMap((r) => r.stop === null ? [] : [r.stop]).sort();
  const horizon = stops.length ? stops[stops.length - 1] : null;
  const all = [...new Set(results.flatMap((r) => r.members))]
    .filter((m) => horizon === null || m >= horizon)
    .sort()
    .reverse();
  const members = all.slice(0, limit);
  // Each walk asked for one more than a page: a full page has more below it if any walk found
  // more, or stopped early.
  if (members.length === limit && (all.length > limit || horizon !== null)) {
    return { members, next: members[members.length - 1] };
  }
  return { members, next: members.length === limit ? null : horizon };
}

/** The task views of a page: one MGET per partition; an unprojected one from its index entry. */
async function loadViews(
  redis: RedisClient,
  members: string[],
  owner: Map<string, string>,
): Promise<TaskView[]> {
  const byPrefix = new Map<string, string[]>();
  for (const m of members) {
    const prefix = owner.get(m)!;
    byPrefix.set(prefix, [...(byPrefix.get(prefix) ?? []), m]);
  }
  const views = new Map<string, TaskView>();
  await Promise.all([...byPrefix].map(async ([prefix, group]) => {
    const raw = await redis.mget(...group.map((m) => taskViewKey(prefix, memberTaskId(m))));
    const missing = group.filter((_, i) => raw[i] === null);
    const docs = missing.length
      ? await redis.hmget(taskIndexKeys(prefix).docs, ...missing.map(memberTaskId))
      : [];
    group.forEach((m, i) => raw[i] && views.set(m, JSON.parse(raw[i]!) as TaskView));
    missing.forEach((m, i) => views.set(m, fromIndex(m, docs[i] ? JSON.parse(docs[i]!) : null)));
  }));
  return members.map((m) => views.get(m)!);
}

/** What the index knows of a task the task view has not projected (yet, or any more). */
function fromIndex(member: string, doc: IndexDoc | null): TaskView {
  const created = new Date(memberTime(member)).toISOString();
  return {
    ...initialTaskView(memberTaskId(member)),
    video_id: doc?.video_id ?? null,
    user_id: doc?.user_id ?? null,
    status: doc?.status ?? "queued",
    created_at: created,
    updated_at: created,
  };
}
