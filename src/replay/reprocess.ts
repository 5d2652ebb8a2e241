import { EventStore } from "../event_store.ts";
import {
  markId,
  type Partition,
  type PartitionScope,
  singleScope,
  unmarkId,
} from "../partitions.ts";
import { requestEntryId, runNumber, type StoredEvent } from "../events.ts";
import { foldTaskView, type TaskStatus } from "../projections/task_view/view.ts";
import { deleteDeadLetterScript, reprocessScript } from "../redis/scripts.ts";
import { fieldsToRecord } from "../events.ts";

export type StatusFilter = "failed" | "dead_lettered" | "completed";

/** Where the tasks are: one partition's store, or a scope of partitions (src/partitions.ts). */
export type Stores = EventStore | PartitionScope;

const scopeOf = (stores: Stores): PartitionScope =>
  stores instanceof EventStore ? singleScope(stores) : stores;

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
  stores: Stores,
  selection: Selection,
  requester: Requester & {
    dryRun: boolean;
    now: Date;
    onProgress?: (done: number, total: number) => void;
  },
): Promise<Outcome[]> {
  const scope = scopeOf(stores);
  const ids = selection.taskIds?.length ? selection.taskIds : (await Promise.all(
    scope.partitions.map((p) => queuedBetween(p.store, selection.since, selection.until)),
  )).flat();
  const outcomes: Outcome[] = [];
  for (const [i, taskId] of ids.entries()) {
    const partition = scope.ofTask(taskId);
    outcomes.push(
      partition
        ? await reprocessOne(partition.store, taskId, selection.status, requester)
        : { task_id: taskId, status: "unknown", skipped: "unknown task" },
    );
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
  /** With several partitions: the partition it is in (its id says so too). */
  partition?: number;
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

/** A dead letter with where it lives (its `id` is marked with the partition when ids are). */
interface Located {
  letter: DeadLetter;
  partition: Partition;
  /** Its id in its partition's dead-letter stream. */
  streamId: string;
}

async function listLocated(stores: Stores, count: number, after: string): Promise<Located[]> {
  const scope = scopeOf(stores);
  // `after`: "-", or "(<id>" with the id as listed (`p<k>-<ms-seq>` when ids are marked). The
  // order is (stream id, partition): two partitions may hold the same stream id, so after the
  // k-th partition's id X, partitions up to k go on after X and the later ones from X itself.
  const raw = after.replace(/^\(/, "");
  const named = after === "-" ? null : unmarkId(scope, raw);
  // A plain ms-seq with several partitions: after that time in every partition.
  const cursor = named
    ? { index: named.partition.index, id: named.id }
    : /^\d+-\d+$/.test(raw)
    ? { index: Infinity, id: raw }
    : null;
  if (after !== "-" && !cursor) return [];
  const lists = await Promise.all(scope.partitions.map(async (partition) => {
    const { redis, keys } = partition.store;
    const start = cursor === null
      ? "-"
      : partition.index <= cursor.index
      ? `(${cursor.id}`
      : cursor.id;
    const entries = await redis.xrange(keys.deadLetterStream, start, "+", "COUNT", count);
    return entries.map(([id, fields]): Located => ({
      letter: {
        ...toDeadLetter(markId(scope, partition, id), fields),
        ...(scope.marked ? { partition: partition.index } : {}),
      },
      partition,
      streamId: id,
    }));
  }));
  // Oldest first over all partitions (stream ids are times), ties in partition order.
  return lists.flat().sort((a, b) =>
    compareStreamIds(a.streamId, b.streamId) || a.partition.index - b.partition.index
  ).slice(0, count);
}

function compareStreamIds(a: string, b: string): number {
  const [am, as] = a.split("-").map(BigInt);
  const [bm, bs] = b.split("-").map(BigInt);
  return am === bm ? Number(as - bs) : am < bm ? -1 : 1;
}

/**
 * Dead letters, oldest first, over the scope's partitions; `after` is "-" or "(" and a dead
 * letter's id as listed (`p<k>-<ms-seq>` with several partitions).
 */
export async function listDeadLetters(stores: Stores, count = 100, after = "-") {
  return (await listLocated(stores, count, after)).map((l) => l.letter);
}

async function locate(stores: Stores, id: string): Promise<Located | null> {
  const scope = scopeOf(stores);
  const named = unmarkId(scope, id);
  if (!named || !/^\d+-\d+$/.test(named.id)) return null;
  const { redis, keys } = named.partition.store;
  const [entry] = await redis.xrange(keys.deadLetterStream, named.id, named.id);
  if (!entry) return null;
  return {
    letter: {
      ...toDeadLetter(id, entry[1]),
      ...(scope.marked ? { partition: named.partition.index } : {}),
    },
    partition: named.partition,
    streamId: named.id,
  };
}

/** A dead letter by id (`p3-<ms-seq>` with several partitions), or null. */
export async function getDeadLetter(stores: Stores, id: string): Promise<DeadLetter | null> {
  return (await locate(stores, id))?.letter ?? null;
}

/**
 * Moves dead letters back to the work stream as a new run of their task. The dead entry is
 * deleted in the same script that re-adds the work, so concurrent redrives run it once.
 */
export async function redrive(
  stores: Stores,
  ids: string[] | "all",
  requester: Requester & {
    dryRun: boolean;
    now: Date;
    onProgress?: (done: number, total: number) => void;
  },
): Promise<(Outcome & { dead_letter: string })[]> {
  const located = ids === "all"
    ? await listLocated(stores, 1_000_000, "-")
    : await Promise.all(ids.map((id) => locate(stores, id)));
  const letters = located.map((l, i) => l ?? { letter: { id: ids[i], task_id: "" } as DeadLetter });
  const outcomes = [];
  for (const [i, found] of letters.entries()) {
    const letter = found.letter;
    if (!letter.task_id || !("partition" in found)) {
      outcomes.push({
        dead_letter: letter.id,
        task_id: "",
        status: "unknown" as const,
        skipped: letter.group ? "malformed entry without a task" : "no such dead letter",
      });
    } else {
      const outcome = await reprocessOne(
        found.partition.store,
        letter.task_id,
        undefined,
        requester,
        found.streamId,
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
  stores: Stores,
  ids: string[],
  requester: Requester & { dryRun: boolean; now: Date },
): Promise<Deletion[]> {
  const out: Deletion[] = [];
  for (const id of ids) {
    const found = await locate(stores, id);
    if (!found) {
      out.push({ dead_letter: id, task_id: "", skipped: "no such dead letter" });
      continue;
    }
    const { letter, partition, streamId } = found;
    if (requester.dryRun) {
      out.push({ dead_letter: id, task_id: letter.task_id });
      continue;
    }
    const { store } = partition;
    const deleted = await deleteDeadLetterScript.run(store.redis, {
      keys: {
        dead_letters: store.keys.deadLetterStream,
        events: store.keys.eventStream,
        timeline: store.keys.taskTimeline(letter.task_id),
      },
      args: {
        entry: streamId,
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
