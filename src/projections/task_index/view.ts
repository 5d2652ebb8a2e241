import { idTime, type StoredEvent } from "../../events.ts";
import { STATUS_EVENTS, type TaskStatus, taskStatusAfter } from "../task_view/view.ts";

/**
 * The task index: every task by creation time and status, plus its search keys, so the dashboard
 * can list tasks newest first, filter them and search them. All sorted sets have score 0 and
 * members `<created ms, 13 digits>:<task id>` (an "index member"), so they sort by creation time
 * then id, and a page is `ZRANGE key (<cursor> - BYLEX REV LIMIT 0 n`: keyset pagination that
 * never shows a task twice and stays correct while new tasks arrive (they sort above the cursor).
 *
 * Kept for the tasks created within VIEW_RETENTION_S of the newest status event folded (event
 * times, never the clock): older tasks are trimmed in the fold, so a rebuild gives the same index.
 */
export function taskIndexKeys(prefix: string) {
  const p = `${prefix}:task-index`;
  return {
    /** Every indexed task (zset of index members). */
    all: `${p}:all`,
    /** The tasks whose status is `status` now (zset of index members). */
    status: (status: TaskStatus) => `${p}:status:${status}`,
    /** The tasks of a video (zset of index members). */
    video: (videoId: string) => `${p}:video:${videoId}`,
    /** The tasks of a user (zset of index members). */
    user: (userId: string) => `${p}:user:${userId}`,
    /** The tasks sent with an idempotency key, any user (zset of index members). */
    idempotency: (key: string) => `${p}:idem:${key}`,
    /** Task id -> its entry as JSON (IndexDoc): where it is indexed, to move and trim it. */
    docs: `${p}:docs`,
    /** Task id -> its prompt, normalised (searchPrompt), for substring search. */
    prompts: `${p}:prompts`,
    /**
     * `watermark`: the newest status event time folded (ms), from which the trim floor follows;
     * `next_position`: the position the next indexed task gets.
     */
    meta: `${p}:meta`,
    /** Position -> index member, for the tasks a trigram lookup finds (hash). */
    positions: `${p}:positions`,
    /**
     * The trigram bitmap of a block of GRAM_BLOCK positions (string): row `slot` holds one bit
     * per position, set when that task's prompt has a trigram hashing to `slot`.
     */
    grams: (block: number | string) => `${p}:grams:${block}`,
    /** Block -> tasks indexed in it (hash): a block's bitmap goes when its last task does. */
    gramBlocks: `${p}:gram-blocks`,
    /** Every key of the index, as a SCAN pattern. */
    pattern: `${p}:*`,
  };
}
export type TaskIndexKeys = ReturnType<typeof taskIndexKeys>;

/** The event types the index folds: the ones that create a task or move its status. */
export const TASK_INDEX_EVENTS = STATUS_EVENTS;

/** Index members sort by creation time: 13 digits hold every ms time up to the year 2286. */
export const indexMember = (createdMs: number, taskId: string) =>
  `${String(createdMs).padStart(13, "0")}:${taskId}`;
/** The lowest possible member of tasks created at or after `ms` (a lex bound without its `[`). */
export const memberFloor = (ms: number) => String(Math.max(0, Math.floor(ms))).padStart(13, "0");
export const memberTaskId = (member: string) => member.slice(14);
export const memberTime = (member: string) => Number(member.slice(0, 13));
/** A cursor is the last member of the previous page. */
export const MEMBER_PATTERN = /^\d{13}:.+$/;

/**
 * A prompt as the index stores and searches it: lower case, runs of white space as one space,
 * so "Golden  Hour" is found by "golden hour". Queries are normalised the same way.
 */
export const searchPrompt = (text: string) => text.toLowerCase().replace(/\s+/g, " ").trim();

/**
 * Trigram rows (hash slots) of the prompt bitmaps. With prompts of a few hundred characters
 * (about 300 distinct trigrams) a row is set for about a quarter of the tasks, so a query of n
 * trigrams leaves about 0.25^n of them as candidates to check.
 */
export const GRAM_SLOTS = 1024;
const GRAM_BITS = 10; // GRAM_SLOTS = 2 ** GRAM_BITS: a slot is the hash's top bits
/** Positions per bitmap block: a block's string is GRAM_SLOTS rows of GRAM_BLOCK bits (512 KB). */
export const GRAM_BLOCK = 4_096;

/**
 * The trigram rows of a normalised text: every three consecutive UTF-16 code units, hashed to one
 * of GRAM_SLOTS rows, distinct and in order. Empty below three code units. (Plans and queries
 * both compute them here; Redis only stores and ANDs the rows.)
 */
export function gramSlots(text: string): number[] {
  const seen = new Uint8Array(GRAM_SLOTS);
  let count = 0;
  for (let i = 0; i + 2 < text.length; i++) {
    const h = Math.imul(
      Math.imul(text.charCodeAt(i), 0x9e3779b1) ^ Math.imul(text.charCodeAt(i + 1), 0x85ebca77) ^
        Math.imul(text.charCodeAt(i + 2), 0xc2b2ae3d),
      0x27d4eb2f,
    );
    const slot = h >>> (32 - GRAM_BITS);
    if (seen[slot] === 0) {
      seen[slot] = 1;
      count++;
    }
  }
  const slots = new Array<number>(count);
  for (let slot = 0, k = 0; slot < GRAM_SLOTS; slot++) if (seen[slot]) slots[k++] = slot;
  return slots;
}

/**
 * Where a task's trigram bits are: its bitmap block, its column there, and its prompt's rows; bit
 * offset `slot * GRAM_BLOCK + column` of the block's string.
 */
export function gramBits(position: number, prompt: string | null) {
  return {
    block: Math.floor(position / GRAM_BLOCK),
    column: position % GRAM_BLOCK,
    slots: prompt === null ? [] : gramSlots(prompt),
  };
}

/** One indexed task. */
export interface IndexedTask {
  member: string;
  /** Its column in the trigram bitmaps: tasks are numbered as they are indexed, from 0. */
  position: number;
  status: TaskStatus;
  video_id: string;
  user_id: string;
  idempotency_key: string | null;
  /** Normalised (searchPrompt); null for tasks queued before events carried the prompt. */
  prompt: string | null;
}

/** An indexed task as stored in the docs hash (its prompt is in the prompts hash). */
export type IndexDoc = Omit<IndexedTask, "prompt">;

export interface TaskIndexState {
  /** VIEW_RETENTION_S in ms: tasks created this long before the watermark are trimmed. */
  retention_ms: number;
  /** The newest status event time folded (ms), or null before any. */
  watermark: number | null;
  /** The position the next indexed task gets. */
  next_position: number;
  tasks: Record<string, IndexedTask>;
}

/** VIEW_RETENTION_S's default, for the projection's own fold (tests pass their own). */
const DEFAULT_RETENTION_S = 2_592_000;

export function initialTaskIndex(retentionS = DEFAULT_RETENTION_S): TaskIndexState {
  return { retention_ms: retentionS * 1000, watermark: null, next_position: 0, tasks: {} };
}

/** An event's time in ms (its entry id's time if `at` does not parse, so a fold never gets NaN). */
export function eventTime(event: StoredEvent): number {
  const at = Date.parse(event.at);
  return Number.isFinite(at) ? at : idTime(event.id);
}

/** Tasks created before this are trimmed: the watermark less the retention. */
export const trimFloor = (watermark: number | null, retentionMs: number) =>
  watermark === null ? -Infinity : watermark - retentionMs;

/**
 * Pure: one indexed task after an event, given the trim floor after that event. A task enters on
 * task.queued (unless already older than the floor) and then follows the task view's status
 * (taskStatusAfter, the one place statuses are decided); events of tasks not indexed (queued
 * before the log's start, or trimmed) leave them out.
 */
export function indexTask(
  task: IndexedTask | undefined,
  event: StoredEvent,
  { floor, position }: { floor: number; position: number },
): IndexedTask | undefined {
  if (event.type === "task.queued" && !task) {
    const created = eventTime(event);
    if (created < floor) return undefined;
    return {
      member: indexMember(created, event.task_id),
      position,
      status: taskStatusAfter("queued", event),
      video_id: event.data.video_id,
      user_id: event.data.user_id,
      idempotency_key: event.data.idempotency_key ?? null,
      prompt: event.data.prompt === undefined ? null : searchPrompt(event.data.prompt),
    };
  }
  if (!task) return undefined;
  const status = taskStatusAfter(task.status, event);
  return status === task.status ? task : { ...task, status };
}

const handled = new Set<string>(TASK_INDEX_EVENTS);

/**
 * Pure: folds one event into the index. The watermark moves with every folded event's time and
 * every task created before the floor is dropped: the same events give the same index, however
 * they are batched (the floor only rises, and a task's creation time never changes).
 */
export function evolveTaskIndex(state: TaskIndexState, event: StoredEvent): TaskIndexState {
  if (!handled.has(event.type)) return state;
  const watermark = Math.max(state.watermark ?? -Infinity, eventTime(event));
  const floor = trimFloor(watermark, state.retention_ms);
  const before = state.tasks[event.task_id];
  const next = indexTask(before, event, { floor, position: state.next_position });
  // A new object of the tasks kept (no `delete`, which makes every later copy slow).
  const lowest = memberFloor(floor);
  const tasks: Record<string, IndexedTask> = {};
  for (const [id, task] of Object.entries(state.tasks)) if (task.member >= lowest) tasks[id] = task;
  if (next && next.member >= lowest) tasks[event.task_id] = next;
  const next_position = state.next_position + (next && !before ? 1 : 0);
  return { ...state, watermark, next_position, tasks };
}

/** The sorted sets an indexed task is a member of. */
export function indexSets(keys: TaskIndexKeys, task: IndexDoc): string[] {
  const sets = [
    keys.all,
    keys.status(task.status),
    keys.video(task.video_id),
    keys.user(task.user_id),
  ];
  if (task.idempotency_key !== null) sets.push(keys.idempotency(task.idempotency_key));
  return sets;
}

export const toDoc = ({ prompt: _, ...doc }: IndexedTask): IndexDoc => doc;

/**
 * What the index's keys hold for a state, key -> members (sorted) or hash: the Redis layout of
 * the pure fold, so a test can compare the projected keys with it.
 */
export function indexContents(state: TaskIndexState, prefix: string) {
  const keys = taskIndexKeys(prefix);
  const sets: Record<string, string[]> = {};
  const docs: Record<string, string> = {};
  const prompts: Record<string, string> = {};
  const positions: Record<string, string> = {};
  /** Block key -> the offsets of its set bits, sorted. */
  const grams: Record<string, number[]> = {};
  const blocks: Record<string, string> = {};
  for (const [id, task] of Object.entries(state.tasks)) {
    for (const set of indexSets(keys, task)) (sets[set] ??= []).push(task.member);
    docs[id] = JSON.stringify(toDoc(task));
    if (task.prompt !== null) prompts[id] = task.prompt;
    positions[task.position] = task.member;
    const { block, column, slots } = gramBits(task.position, task.prompt);
    blocks[block] = String(Number(blocks[block] ?? 0) + 1);
    const offsets = slots.map((slot) => slot * GRAM_BLOCK + column);
    if (offsets.length) (grams[keys.grams(block)] ??= []).push(...offsets);
  }
  for (const members of Object.values(sets)) members.sort();
  for (const offsets of Object.values(grams)) offsets.sort((a, b) => a - b);
  const meta: Record<string, string> = state.watermark === null
    ? {}
    : { watermark: String(state.watermark), next_position: String(state.next_position) };
  return { sets, docs, prompts, meta, positions, grams, blocks };
}
