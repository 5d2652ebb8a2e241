import { z } from "zod";
import type { Logger } from "./log.ts";
import { TaskResultSchema } from "./pipeline/scene.ts";
import { STEP_NAMES } from "./pipeline/steps.ts";

/** A step name as events carry it; the names come from the step list (src/pipeline/steps.ts). */
export const StepName = z.enum(STEP_NAMES);
export type StepName = z.infer<typeof StepName>;

const base = <T extends string, D extends z.ZodType>(type: T, data: D) =>
  z.object({ type: z.literal(type), task_id: z.string().min(1), at: z.string(), data });

/** Events of the task event stream: a discriminated union, validated whenever read back. */
export const TaskEventSchema = z.discriminatedUnion("type", [
  base(
    "task.queued",
    z.object({
      video_id: z.string(),
      user_id: z.string(),
      is_revision: z.boolean(),
      webhook_entry: z.string(),
      idempotency_key: z.string().optional(),
      /** The request's prompt (at most PROMPT_MAX_CHARS), for the task index's search. */
      prompt: z.string().optional(),
    }),
  ),
  base(
    "task.reprocess_requested",
    z.object({
      run: z.number().int().min(2),
      requested_by: z.string(),
      reason: z.string(),
      source: z.enum(["replay", "redrive"]),
      dead_letter_entry: z.string().optional(),
      /** The work entry of this run, holding the request. */
      webhook_entry: z.string().optional(),
    }),
  ),
  base("task.started", z.object({ attempt: z.number().int(), worker: z.string() })),
  base("step.started", z.object({ step: StepName, attempt: z.number().int() })),
  base(
    "step.completed",
    z.object({
      step: StepName,
      attempt: z.number().int(),
      duration_ms: z.number(),
      output: z.record(z.string(), z.unknown()),
    }),
  ),
  base(
    "scenes.generated",
    z.object({
      video_id: z.string(),
      user_id: z.string(),
      result: TaskResultSchema,
      /** When the run's first attempt started, for the task's processing time. */
      started_at: z.string().optional(),
      /** Whether the request has a callback_url, so the callback sender can skip the others. */
      callback: z.boolean().optional(),
    }),
  ),
  base(
    "task.completed",
    z.object({
      video_id: z.string(),
      result: TaskResultSchema,
      duration_ms: z.number(),
      callback: z.boolean().optional(),
    }),
  ),
  base(
    "task.failed",
    z.object({
      error: z.string(),
      step: StepName.optional(),
      retryable: z.boolean(),
      attempt: z.number().int(),
      final: z.boolean(),
      retry_in_ms: z.number().optional(),
      callback: z.boolean().optional(),
    }),
  ),
  base(
    "task.dead_lettered",
    z.object({ error: z.string(), attempts: z.number().int(), dead_letter_entry: z.string() }),
  ),
  base(
    "task.dead_letter_deleted",
    z.object({
      /** The dead letter an operator deleted for good (it will not be redriven). */
      dead_letter_entry: z.string(),
      requested_by: z.string(),
      reason: z.string(),
    }),
  ),
  base(
    "callback.attempted",
    z.object({
      webhook_id: z.string(),
      attempt: z.number().int(),
      status_code: z.number().int().nullable(),
      /** A short public reason (`timeout`, `HTTP 500`, `refused: private address`). */
      error: z.string().nullable(),
      retry_in_ms: z.number().nullable(),
      /** The full error, naming hosts and addresses: admin reads only, stripped from public. */
      detail: z.string().optional(),
    }),
  ),
  base(
    "callback.delivered",
    z.object({ webhook_id: z.string(), attempts: z.number().int(), status_code: z.number().int() }),
  ),
  base(
    "callback.failed",
    z.object({
      webhook_id: z.string(),
      attempts: z.number().int(),
      /** A short public reason, as in callback.attempted. */
      error: z.string(),
      /** The full error: admin reads only, stripped from public. */
      detail: z.string().optional(),
    }),
  ),
]);

export type TaskEvent = z.infer<typeof TaskEventSchema>;
export type TaskEventType = TaskEvent["type"];
export type EventOf<T extends TaskEventType> = Extract<TaskEvent, { type: T }>;
/** An event as read back from the stream, with its entry id. */
export type StoredEvent = TaskEvent & { id: string };
/** An event before it is appended: the store adds the task id. */
export type NewEvent = Omit<TaskEvent, "task_id">;

/** The one event factory: a typed event of `type` at `at` (ISO time), without its task id. */
export function event<T extends TaskEventType>(
  type: T,
  at: string,
  data: EventOf<T>["data"],
): NewEvent {
  return { type, at, data } as NewEvent;
}

/** Stream entries are flat field lists: type, task_id, at, data (JSON), as the scripts write them. */
export function fieldsToRecord(fields: string[]): Record<string, string> {
  const record: Record<string, string> = {};
  for (let i = 0; i + 1 < fields.length; i += 2) record[fields[i]] = fields[i + 1];
  return record;
}

/** The event type of a raw entry, without decoding it. */
export function entryType(fields: string[]): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === "type") return fields[i + 1];
  return undefined;
}

/** Decodes a stream entry; throws a ZodError or SyntaxError when the entry is malformed. */
export function decodeEvent(id: string, fields: string[]): StoredEvent {
  const record = fieldsToRecord(fields);
  const event = TaskEventSchema.parse({ ...record, data: JSON.parse(record.data ?? "null") });
  return { ...event, id };
}

/** Decodes stream entries, logging and skipping the ones that do not decode. */
export function decodeValid(
  entries: { id: string; fields: string[] }[],
  log: Pick<Logger, "error">,
): StoredEvent[] {
  const events: StoredEvent[] = [];
  for (const { id, fields } of entries) {
    try {
      events.push(decodeEvent(id, fields));
    } catch (error) {
      log.error("Skipping a malformed event", { entry: id, error: String(error) });
    }
  }
  return events;
}

/** When a stream entry was appended: the ms part of its id ("ms-seq"). */
export const idTime = (id: string): number => idPart(id, 0, dashAt(id));

/**
 * Compares Redis stream ids ("ms-seq") numerically; a missing sequence counts as 0. Called per
 * entry in the consumers' loops, so it reads the digits in place instead of splitting.
 */
export function compareIds(a: string, b: string): number {
  const ad = dashAt(a);
  const bd = dashAt(b);
  const am = idPart(a, 0, ad);
  const bm = idPart(b, 0, bd);
  if (am !== bm) return am - bm;
  return sequence(a, ad) - sequence(b, bd);
}

/** The sequence part after the dash at `dash` (up to a further dash), 0 without one. */
function sequence(id: string, dash: number): number {
  if (dash === id.length) return 0;
  const end = id.indexOf("-", dash + 1);
  return idPart(id, dash + 1, end < 0 ? id.length : end);
}

const dashAt = (id: string) => {
  const at = id.indexOf("-");
  return at < 0 ? id.length : at;
};

/** The number written in id[from, to): its digits, or Number's reading of anything else. */
function idPart(id: string, from: number, to: number): number {
  if (from === to || to - from > 15) return Number(id.slice(from, to));
  let value = 0;
  for (let i = from; i < to; i++) {
    const digit = id.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) return Number(id.slice(from, to));
    value = value * 10 + digit;
  }
  return value;
}

/** The events of a task's latest run: everything after its last reprocess request. */
export function currentRun(history: StoredEvent[]): StoredEvent[] {
  let start = 0;
  history.forEach((e, i) => {
    if (e.type === "task.reprocess_requested") start = i;
  });
  return history.slice(start);
}

/** The task's run number: 1, then one more per reprocess. */
export function runNumber(history: StoredEvent[]): number {
  const last = currentRun(history)[0];
  return last?.type === "task.reprocess_requested" ? last.data.run : 1;
}

/** The work entry holding the request of the task's latest run (its payload may be newer than
 * the original entry, which retention trims first). */
export function requestEntryId(history: StoredEvent[]): string | null {
  let entry: string | null = null;
  for (const e of history) {
    if (e.type === "task.queued") entry = e.data.webhook_entry;
    if (e.type === "task.reprocess_requested" && e.data.webhook_entry) entry = e.data.webhook_entry;
  }
  return entry;
}
