import type { Redis } from "ioredis";
import { ClaimLostError, type EventStore } from "../src/event_store.ts";
import { isRetryable } from "../src/errors.ts";
import {
  currentRun,
  fieldsToRecord,
  type StepName,
  type StoredEvent,
  type TaskEvent,
} from "../src/events.ts";
import { GROUP_START, WORKER_GROUP } from "../src/keys.ts";
import type { Logger } from "../src/log.ts";
import { buildResult, type Pipeline, type StepContext } from "../src/pipeline/pipeline.ts";
import type { StreamEntry } from "../src/redis/streams.ts";
import { retryDelayMs, sleep } from "../src/sleep.ts";
import { type VideoRequest, VideoRequestSchema } from "../src/webhook.ts";
import { GroupConsumer } from "./group_consumer.ts";

export interface TaskWorkerOptions {
  store: EventStore;
  /** A dedicated connection for XREADGROUP BLOCK. */
  blocking: Redis;
  pipeline: Pipeline;
  log: Logger;
  consumer: string;
  concurrency: number;
  claimIdleMs: number;
  maxAttempts: number;
  retryBaseMs: number;
  retryMaxMs: number;
  clock?: () => Date;
}

interface Task {
  /** A first delivery of a task's first run: nothing can have happened to it yet. */
  fresh: boolean;
  entryId: string;
  taskId: string;
  request: VideoRequest;
  payload: string;
  log: Logger;
}

/** The events that end a worker's part of a task: after one of them it has nothing left to do. */
export function workerDone(history: StoredEvent[]): boolean {
  return history.some((e) =>
    e.type === "scenes.generated" || e.type === "task.completed" ||
    e.type === "task.dead_lettered" || (e.type === "task.failed" && e.data.final)
  );
}

/**
 * Runs the generation pipeline (reframe, scenes) for entries of the webhook stream, as one
 * consumer of the "workers" group. Its outcome is `scenes.generated`, which the scene sink turns
 * into stored scenes and `task.completed`.
 *
 * At-least-once with effects once: the outcome event and the XACK are one script, every write is
 * fenced on still owning the entry, and a redelivered task resumes after its last completed step,
 * reusing the recorded outputs.
 */
export class TaskWorker {
  /** Its consumer-group loop: start and stop go through it. */
  readonly consumer: GroupConsumer;
  readonly #now: () => Date;

  constructor(readonly options: TaskWorkerOptions) {
    this.#now = options.clock ?? (() => new Date());
    this.consumer = new GroupConsumer({
      redis: options.store.redis,
      blocking: options.blocking,
      stream: options.store.keys.webhookStream,
      group: WORKER_GROUP,
      startAt: GROUP_START[WORKER_GROUP],
      consumer: options.consumer,
      concurrency: options.concurrency,
      claimIdleMs: options.claimIdleMs,
      log: options.log,
      handle: (entry, signal) => this.#handle(entry, signal),
    });
  }

  async #handle(entry: StreamEntry, signal: AbortSignal): Promise<void> {
    const { log } = this.options;
    const record: Record<string, string | undefined> = fieldsToRecord(entry.fields);
    const taskId = record.task_id ?? "";
    let request: VideoRequest;
    try {
      request = VideoRequestSchema.parse(JSON.parse(record.payload ?? ""));
    } catch (error) {
      const reason = error instanceof SyntaxError ? "payload is not JSON" : "payload is invalid";
      log.error("Dead-lettering a malformed entry", { entry: entry.id, task_id: taskId, reason });
      await this.#deadLetter(
        { entryId: entry.id, taskId, payload: JSON.stringify(record) },
        0,
        `Malformed work entry: ${reason}`,
      );
      return;
    }
    const task = {
      fresh: !entry.reclaimed && record.run === undefined,
      entryId: entry.id,
      taskId,
      request,
      payload: record.payload!,
      log: log.child({ task_id: taskId }),
    };
    await this.#process(task, signal);
  }

  #settle(task: Pick<Task, "entryId" | "taskId">, mode: "append" | "ack", events: Event[]) {
    return this.options.store.settle({
      group: WORKER_GROUP,
      consumer: this.options.consumer,
      entryId: task.entryId,
      taskId: task.taskId,
      mode,
      at: this.#iso(),
      events,
    });
  }

  async #process(task: Task, signal: AbortSignal): Promise<void> {
    const { store, pipeline, maxAttempts } = this.options;
    // A fresh task's timeline holds only task.queued: skip reading it (a round trip per task).
    const all = task.fresh ? [] : await store.timeline(task.taskId);
    const history = currentRun(all);
    if (workerDone(history)) {
      // Its outcome is already in the log (the entry was re-added): acknowledge, repeat nothing.
      await this.#settle(task, "ack", []);
      return;
    }
    const outputs = completedOutputs(history);
    let attempt = history.filter((e) => e.type === "task.started").length + 1;
    const callback = Boolean(task.request.callback_url);
    let startedAt = history.find((e) => e.type === "task.started")?.at;

    while (true) {
      if (attempt > maxAttempts) {
        await this.#deadLetter(
          task,
          attempt - 1,
          "Attempts exhausted after repeated interruptions",
        );
        return;
      }
      const at = this.#iso();
      startedAt ??= at;
      // Events wait for the next settle when nothing runs in between: task.started goes with the
      // first step.started, each step.completed with the next step.started (or the outcome), so
      // a task takes one fenced script per step instead of two.
      let carry: Event[] = [event("task.started", at, { attempt, worker: this.options.consumer })];
      let step: StepName | undefined;
      try {
        for (const s of pipeline) {
          if (outputs[s.name]) continue;
          step = s.name;
          await this.#settle(task, "append", [
            ...carry,
            event("step.started", this.#iso(), { step: s.name, attempt }),
          ]);
          carry = [];
          const t0 = performance.now();
          const context: StepContext = {
            taskId: task.taskId,
            request: task.request,
            attempt,
            outputs,
            signal,
            storedRevision: storedRevision(all),
          };
          const output = await s.run(context);
          signal.throwIfAborted();
          outputs[s.name] = output;
          carry = [event("step.completed", this.#iso(), {
            step: s.name,
            attempt,
            duration_ms: Math.round((performance.now() - t0) * 100) / 100,
            output,
          })];
        }
        await this.#settle(task, "ack", [
          ...carry,
          event("scenes.generated", this.#iso(), {
            video_id: task.request.video_id,
            user_id: task.request.user_id,
            result: buildResult(outputs, task.request.is_revision),
            started_at: startedAt,
            callback,
          }),
        ]);
        task.log.info("Scenes generated", { attempt });
        return;
      } catch (error) {
        if (signal.aborted || error instanceof ClaimLostError) throw error;
        const message = error instanceof Error ? error.message : String(error);
        const retryable = isRetryable(error);
        // A step.completed still waiting for its settle (the settle itself failed) goes in first,
        // so a later attempt or another worker does not redo that step.
        const unsaved = carry.filter((e) => e.type === "step.completed");
        if (!retryable || attempt >= maxAttempts) {
          task.log.warn("Task failed", { attempt, step, retryable, error: message });
          await this.#deadLetter(task, attempt, message, step, retryable, unsaved);
          return;
        }
        const wait = retryDelayMs(
          error,
          attempt,
          this.options.retryBaseMs,
          this.options.retryMaxMs,
        );
        task.log.info("Task will retry", { attempt, step, error: message, retry_in_ms: wait });
        await this.#settle(task, "append", [
          ...unsaved,
          event("task.failed", this.#iso(), {
            error: message,
            step,
            retryable: true,
            attempt,
            final: false,
            retry_in_ms: wait,
          }),
        ]);
        await sleep(wait, signal);
        attempt++;
      }
    }
  }

  async #deadLetter(
    task: Pick<Task, "entryId" | "taskId" | "payload"> & { request?: VideoRequest },
    attempt: number,
    error: string,
    step?: StepName,
    retryable = false,
    before: Event[] = [],
  ): Promise<void> {
    const callback = Boolean(task.request?.callback_url);
    await this.options.store.settle({
      group: WORKER_GROUP,
      consumer: this.options.consumer,
      entryId: task.entryId,
      taskId: task.taskId,
      mode: "dead",
      at: this.#iso(),
      events: task.taskId
        ? [
          ...before,
          event("task.failed", this.#iso(), {
            error,
            step,
            retryable,
            attempt,
            final: true,
            callback,
          }),
        ]
        : [],
      deadLetter: { error, attempts: attempt, payload: task.payload },
    });
  }

  #iso(): string {
    return this.#now().toISOString();
  }
}

export type Event = Omit<TaskEvent, "task_id">;

/** A typed event without its task id (the store adds it). */
export function event<T extends TaskEvent["type"]>(
  type: T,
  at: string,
  data: Extract<TaskEvent, { type: T }>["data"],
): Event {
  return { type, at, data } as Event;
}

/** The video revision an earlier run of this task generated, which a reprocess must reuse. */
function storedRevision(history: StoredEvent[]): number | undefined {
  const generated = history.findLast((e) => e.type === "scenes.generated");
  return generated?.type === "scenes.generated" ? generated.data.result.video_revision : undefined;
}

/** Outputs of steps a previous attempt completed, so a retry or redelivery does not redo them. */
function completedOutputs(history: StoredEvent[]): StepContext["outputs"] {
  const outputs: StepContext["outputs"] = {};
  for (const e of history) if (e.type === "step.completed") outputs[e.data.step] = e.data.output;
  return outputs;
}
