import type { EventStore } from "../event_store.ts";
import { requestEntryId, runNumber, type StoredEvent } from "../events.ts";
import { foldTaskView, type TaskStatus } from "../projections/task_view/view.ts";
import { deleteDeadLetterScript, reprocessScript } from "../redis/scripts.ts";
import { fieldsToRecord } from "../events.ts";

export type StatusFilter = "failed" | "dead_lettered" | "completed";

export interface Selection {
  taskIds?: string[];
  since?: Date;
  until?: Date;
  status?: StatusFilter;
}

export interface Requester {
  requestedBy: string;
  reason: string;
}

export interface Outcome {
  task_id: string;
  status: TaskStatus | "unknown";
  /** The run started (or, in a dry run, the one that would be). */
  run?: number;
  skipped?: string;
}

/** Task ids of the tasks queued in [since, until], oldest first, read from the event stream. */
async function queuedBetween(store: EventStore, since?: Date, until?: Date): Promise<string[]> {
  const ids: string[] = [];
  let start = since ? String(since.getTime()) : "-";
  const end = until ? String(until.getTime()) : "+";
  while (true) {
    const page = await store.redis.xrange(store.keys.eventStream, start, end, "COUNT", 1_000);
    for (const [, fields] of page) {
      const record = fieldsToRecord(fields);
      if (record.type === "task.queued" && record.task_id) ids.push(record.task_id);
    }
    if (page.length < 1_000) return ids;
    start = `(${page[page.length - 1][0]}`;
  }
}

function matches(history: StoredEvent[], status: StatusFilter | undefined): boolean {
  if (!status) return true;
  const view = foldTaskView(history[0].task_id, history);
  if (status === "dead_lettered") return view.dead_letter_entry !== null;
  return view.status === status;
}

/**
 * Starts a new run of each selected task (or, with `dryRun`, says what it would do). Tasks still
 * queued or processing are skipped, as are tasks whose request is older than the stream retention.
 */
export async function reprocessTasks(
  store: EventStore,
  selection: Selection,
  requester: Requester & {
    dryRun: boolean;
    now: Date;
    onProgress?: (done: number, total: number) => void;
  },
): Promise<Outcome[]> {
  const ids = selection.taskIds?.length
    ? selection.taskIds
    : await queuedBetween(store, selection.since, selection.until);
  const outcomes: Outcome[] = [];
  for (const [i, taskId] of ids.entries()) {
    outcomes.push(await reprocessOne(store, taskId, selection.status, requester));
    requester.onProgress?.(i + 1, ids.length);
  }
  return outcomes.filter((o) => o.skipped !== "does not match the status filter");
}

async function reprocessOne(
  store: EventStore,
  taskId: string,
  status: StatusFilter | undefined,
  requester: Requester & { dryRun: boolean; now: Date },
  deadLetterEntry = "",
  deadLetterPayload = "",
): Promise<Outcome> {
  const history = await store.timeline(taskId);
  if (!history.length) return { task_id: taskId, status: "unknown", skipped: "unknown task" };
  const view = foldTaskView(taskId, history);
  const base = { task_id: taskId, status: view.status };
  if (!matches(history, status)) return { ...base, skipped: "does not match the status filter" };
  if (view.status === "queued" || view.status === "processing") {
    return { ...base, skipped: `still ${view.status}` };
  }
  if (deadLetterEntry && view.dead_letter_entry !== deadLetterEntry) {
    // The task ran again after this dead letter; redriving it would repeat a finished task.
    return { ...base, skipped: "stale: the task ran again after this dead letter" };
  }
  const entry = requestEntryId(history);
  // A dead letter keeps its request, so it can be redriven after the stream was trimmed.
  const payload = (entry ? await store.payload(entry) : "") || deadLetterPayload;
  if (!payload) return { ...base, skipped: "its request is older than the stream retention" };
  const run = runNumber(history);
  if (requester.dryRun) return { ...base, run: run + 1 };
  const reply = await reprocessScript.run(store.redis, {
    keys: {
      webhooks: store.keys.webhookStream,
      events: store.keys.eventStream,
      timeline: store.keys.taskTimeline(taskId),
      dead_letters: store.keys.deadLetterStream,
      run: store.keys.taskRun(taskId),
    },
    args: {
      task_id: taskId,
      payload,
      at: requester.now.toISOString(),
      expected_run: run,
      data: JSON.stringify({
        requested_by: requester.requestedBy,
        reason: requester.reason,
        source: deadLetterEntry ? "redrive" : "replay",
        ...(deadLetterEntry ? { dead_letter_entry: deadLetterEntry } : {}),
      }),
      dead_letter_entry: deadLetterEntry,
      timeline_ttl_s: store.options.timelineTtlS,
    },
  });
  if (reply === -1) return { ...base, skipped: "already redriven" };
  if (reply === -2) return { ...base, skipped: "another reprocess of this task won" };
  return { ...base, run: Number(reply) };
}

export interface DeadLetter {
  id: string;
  task_id: string;
  group: string;
  entry: string;
  error: string;
  attempts: number;
  at: string;
  payload: string;
}

function toDeadLetter(id: string, fields: string[]): DeadLetter {
  const r = fieldsToRecord(fields);
  return {
    id,
    task_id: r.task_id ?? "",
    group: r.group ?? "",
    entry: r.entry ?? "",
    error: r.error ?? "",
    attempts: Number(r.attempts ?? 0),
    at: r.at ?? "",
    payload: r.payload ?? "",
  };
}

/** Dead letters, oldest first. */
export async function listDeadLetters(store: EventStore, count = 100, after = "-") {
  const entries = await store.redis.xrange(store.keys.deadLetterStream, after, "+", "COUNT", count);
  return entries.map(([id, fields]) => toDeadLetter(id, fields));
}

export async function getDeadLetter(store: EventStore, id: string): Promise<DeadLetter | null> {
  const [entry] = await store.redis.xrange(store.keys.deadLetterStream, id, id);
  return entry ? toDeadLetter(entry[0], entry[1]) : null;
}

/**
 * Moves dead letters back to the work stream as a new run of their task. The dead entry is
 * deleted in the same script that re-adds the work, so concurrent redrives run it once.
 */
export async function redrive(
  store: EventStore,
  ids: string[] | "all",
  requester: Requester & {
    dryRun: boolean;
    now: Date;
    onProgress?: (done: number, total: number) => void;
  },
): Promise<(Outcome & { dead_letter: string })[]> {
  const letters = ids === "all"
    ? await listDeadLetters(store, 1_000_000)
    : (await Promise.all(ids.map((id) => getDeadLetter(store, id)))).map((l, i) =>
      l ?? { id: ids[i], task_id: "" } as DeadLetter
    );
  const outcomes = [];
  for (const [i, letter] of letters.entries()) {
    if (!letter.task_id) {
      outcomes.push({
        dead_letter: letter.id,
        task_id: "",
        status: "unknown" as const,
        skipped: letter.group ? "malformed entry without a task" : "no such dead letter",
      });
    } else {
      const outcome = await reprocessOne(
        store,
        letter.task_id,
        undefined,
        requester,
        letter.id,
        letter.payload,
      );
      outcomes.push({ dead_letter: letter.id, ...outcome });
    }
    requester.onProgress?.(i + 1, letters.length);
  }
  return outcomes;
}

/** What deleting a dead letter did (or, in a dry run, would do). */
export interface Deletion {
  dead_letter: string;
  task_id: string;
  skipped?: string;
}

/**
 * Deletes dead letters for good (they will not be redriven). Each deletion is recorded as
 * `task.dead_letter_deleted` (who, why) in its task's timeline by the same script that deletes it,
 * so it happens, and is recorded, once. A malformed entry without a task is deleted unrecorded.
 */
export async function deleteDeadLetters(
  store: EventStore,
  ids: string[],
  requester: Requester & { dryRun: boolean; now: Date },
): Promise<Deletion[]> {
  const out: Deletion[] = [];
  for (const id of ids) {
    const letter = await getDeadLetter(store, id);
    if (!letter) {
      out.push({ dead_letter: id, task_id: "", skipped: "no such dead letter" });
      continue;
    }
    if (requester.dryRun) {
      out.push({ dead_letter: id, task_id: letter.task_id });
      continue;
    }
    const deleted = await deleteDeadLetterScript.run(store.redis, {
      keys: {
        dead_letters: store.keys.deadLetterStream,
        events: store.keys.eventStream,
        timeline: store.keys.taskTimeline(letter.task_id),
      },
      args: {
        entry: id,
        task_id: letter.task_id,
        at: requester.now.toISOString(),
        data: JSON.stringify({ requested_by: requester.requestedBy, reason: requester.reason }),
        timeline_ttl_s: store.options.timelineTtlS,
      },
    });
    out.push({
      dead_letter: id,
      task_id: letter.task_id,
      ...(deleted === 1 ? {} : { skipped: "already redriven or deleted" }),
    });
  }
  return out;
}
