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
    /** `watermark`: the newest status event time folded (ms), from which the trim floor follows. */
    meta: `${p}:meta`,
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

/** One indexed task. */
export interface IndexedTask {
  member: string;
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
  tasks: Record<string, IndexedTask>;
}

/** VIEW_RETENTION_S's default, for the projection's own fold (tests pass their own). */
const DEFAULT_RETENTION_S = 2_592_000;

export function initialTaskIndex(retentionS = DEFAULT_RETENTION_S): TaskIndexState {
  return { retention_ms: retentionS * 1000, watermark: null, tasks: {} };
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
  floor: number,
): IndexedTask | undefined {
  if (event.type === "task.queued" && !task) {
    const created = eventTime(event);
    if (created < floor) return undefined;
    return {
      member: indexMember(created, event.task_id),
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
  const tasks = { ...state.tasks };
  const next = indexTask(tasks[event.task_id], event, floor);
  if (next) tasks[event.task_id] = next;
  const lowest = memberFloor(floor);
  for (const [id, task] of Object.entries(tasks)) if (task.member < lowest) delete tasks[id];
  return { ...state, watermark, tasks };
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
  for (const [id, task] of Object.entries(state.tasks)) {
    for (const set of indexSets(keys, task)) (sets[set] ??= []).push(task.member);
    docs[id] = JSON.stringify(toDoc(task));
    if (task.prompt !== null) prompts[id] = task.prompt;
  }
  for (const members of Object.values(sets)) members.sort();
  const meta: Record<string, string> = state.watermark === null
    ? {}
    : { watermark: String(state.watermark) };
  return { sets, docs, prompts, meta };
}
