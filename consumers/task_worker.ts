import type { Redis } from "ioredis";
import { ClaimLostError, type EventStore } from "../src/event_store.ts";
import { isRetryable, RetryableError } from "../src/errors.ts";
import type { Scene, StepName, StoredEvent, TaskEvent, TaskResult } from "../src/events.ts";
import { WORKER_GROUP } from "../src/keys.ts";
import type { Logger } from "../src/log.ts";
import type { Pipeline, StepContext } from "../src/pipeline/pipeline.ts";
import { heartbeatScript } from "../src/redis/scripts.ts";
import { ensureGroup, readGroup, type StreamEntry } from "../src/redis/streams.ts";
import { backoffMs, sleep } from "../src/sleep.ts";
import { type VideoRequest, VideoRequestSchema } from "../src/webhook.ts";

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

class Aborted extends Error {}

/**
 * Runs the pipeline for entries of the webhook stream, as one consumer of the "workers" group.
 *
 * Delivery is at-least-once: a task's outcome event and its XACK are written by one script, and a
 * redelivered task resumes after its last completed step, reusing the recorded outputs. Claims on
 * long tasks are kept fresh, and every write is fenced on still owning the entry, so no task runs
 * in two workers at once.
 */
export class TaskWorker {
  readonly #inflight = new Map<string, { abort: AbortController; done: Promise<void> }>();
  readonly #stop = new AbortController();
  #slotFreed: (() => void) | null = null;
  #loop: Promise<void> | null = null;
  readonly #now: () => Date;

  constructor(readonly options: TaskWorkerOptions) {
    this.#now = options.clock ?? (() => new Date());
  }

  get inflight(): number {
    return this.#inflight.size;
  }

  async start(): Promise<void> {
    const { store } = this.options;
    await ensureGroup(store.redis, store.keys.webhookStream, WORKER_GROUP);
    this.#loop = this.#run();
  }

  async #run(): Promise<void> {
    const { store, blocking, consumer, concurrency, claimIdleMs, log } = this.options;
    let nextClaim = 0;
    while (!this.#stop.signal.aborted) {
      try {
        const free = concurrency - this.#inflight.size;
        if (free <= 0) {
          await new Promise<void>((resolve) => (this.#slotFreed = resolve));
          continue;
        }
        if (Date.now() >= nextClaim) {
          nextClaim = Date.now() + Math.max(50, Math.floor(claimIdleMs / 2));
          const claimed = await this.#reclaim(free);
          if (claimed > 0) continue;
        }
        const entries = await readGroup(blocking, {
          stream: store.keys.webhookStream,
          group: WORKER_GROUP,
          consumer,
          count: free,
          blockMs: Math.min(1_000, Math.max(50, Math.floor(claimIdleMs / 2))),
        });
        // Entries read while stopping stay pending; another worker reclaims them.
        if (!this.#stop.signal.aborted) { for (const entry of entries) this.#spawn(entry); }
      } catch (error) {
        if (this.#stop.signal.aborted) break;
        log.error("Worker read failed", { error: String(error) });
        await sleep(500).catch(() => {});
      }
    }
  }

  /** Takes over entries another consumer left idle for claimIdleMs (it crashed or stalled). */
  async #reclaim(count: number): Promise<number> {
    const { store, consumer, claimIdleMs, log } = this.options;
    const reply = await store.redis.xautoclaim(
      store.keys.webhookStream,
      WORKER_GROUP,
      consumer,
      claimIdleMs,
      "0-0",
      "COUNT",
      count,
    ) as [string, [string, string[]][], string[]];
    const entries = reply[1].filter(([id]) => !this.#inflight.has(id));
    for (const [id, fields] of entries) {
      log.warn("Reclaimed a stalled task", { entry: id });
      this.#spawn({ id, fields });
    }
    return entries.length;
  }

  #spawn(entry: StreamEntry): void {
    const abort = new AbortController();
    const done = this.#handle(entry, abort.signal)
      .catch((error) => this.options.log.error("Task handler crashed", { error: String(error) }))
      .finally(() => {
        this.#inflight.delete(entry.id);
        this.#slotFreed?.();
        this.#slotFreed = null;
      });
    this.#inflight.set(entry.id, { abort, done });
  }

  async #handle(entry: StreamEntry, signal: AbortSignal): Promise<void> {
    const { store, consumer, log } = this.options;
    const record = Object.fromEntries(
      entry.fields.flatMap((_, i, all) => i % 2 ? [] : [[all[i], all[i + 1]]]),
    ) as Record<string, string | undefined>;
    const taskId = record.task_id ?? "";
    const base = { group: WORKER_GROUP, consumer, entryId: entry.id, taskId };

    let request;
    try {
      request = VideoRequestSchema.parse(JSON.parse(record.payload ?? ""));
    } catch (error) {
      const reason = error instanceof SyntaxError ? "payload is not JSON" : "payload is invalid";
      log.error("Dead-lettering a malformed entry", { entry: entry.id, task_id: taskId, reason });
      await store.settle({
        ...base,
        mode: "dead",
        at: this.#iso(),
        events: taskId
          ? [this.#event("task.failed", {
            error: `Malformed work entry: ${reason}`,
            retryable: false,
            attempt: 0,
            final: true,
          })]
          : [],
        deadLetter: {
          error: `Malformed work entry: ${reason}`,
          attempts: 0,
          payload: JSON.stringify(record),
        },
      });
      return;
    }
    const taskLog = log.child({ task_id: taskId });
    const heartbeat = this.#keepClaimFresh(entry.id, signal);
    try {
      await this.#process({ ...base, request, payload: record.payload!, log: taskLog }, heartbeat);
    } catch (error) {
      if (error instanceof ClaimLostError || error instanceof Aborted || heartbeat.signal.aborted) {
        taskLog.warn("Task left pending for another worker", { reason: String(error) });
        return;
      }
      throw error;
    } finally {
      heartbeat.stop();
    }
  }

  async #process(
    task: {
      group: string;
      consumer: string;
      entryId: string;
      taskId: string;
      request: VideoRequest;
      payload: string;
      log: Logger;
    },
    heartbeat: { signal: AbortSignal },
  ): Promise<void> {
    const { store, pipeline, maxAttempts } = this.options;
    const signal = heartbeat.signal;
    const history = await store.timeline(task.taskId);
    const settled = history.some((e) =>
      e.type === "task.completed" || e.type === "task.dead_lettered" ||
      (e.type === "task.failed" && e.data.final)
    );
    const base = { group: task.group, consumer: task.consumer, entryId: task.entryId };
    if (settled) {
      // Redelivered after its outcome was recorded (the outcome and XACK are one script, so this
      // only happens if the entry was re-added): acknowledge without repeating any effect.
      await store.settle({ ...base, taskId: task.taskId, mode: "ack", at: this.#iso() });
      return;
    }
    const outputs = completedOutputs(history);
    const firstStart = history.find((e) => e.type === "task.started")?.at;
    let attempt = history.filter((e) => e.type === "task.started").length + 1;
    const append = (events: Omit<TaskEvent, "task_id">[]) =>
      store.settle({ ...base, taskId: task.taskId, mode: "append", at: this.#iso(), events });

    while (true) {
      if (attempt > maxAttempts) {
        await this.#deadLetter(
          task,
          attempt - 1,
          "Attempts exhausted after repeated interruptions",
        );
        return;
      }
      await append([this.#event("task.started", { attempt, worker: task.consumer })]);
      const started = firstStart ?? this.#iso();
      let step: StepName | undefined;
      try {
        for (const s of pipeline) {
          if (outputs[s.name]) continue;
          step = s.name;
          await append([this.#event("step.started", { step: s.name, attempt })]);
          const t0 = performance.now();
          const context: StepContext = {
            taskId: task.taskId,
            request: task.request,
            attempt,
            outputs,
            signal,
          };
          const output = await s.run(context);
          if (signal.aborted) throw new Aborted(String(signal.reason));
          outputs[s.name] = output;
          await append([this.#event("step.completed", {
            step: s.name,
            attempt,
            duration_ms: Math.round((performance.now() - t0) * 100) / 100,
            output,
          })]);
        }
        const result = buildResult(outputs, task.request.is_revision);
        await store.settle({
          ...base,
          taskId: task.taskId,
          mode: "ack",
          at: this.#iso(),
          events: [this.#event("task.completed", {
            video_id: task.request.video_id,
            result,
            duration_ms: Math.max(0, this.#now().getTime() - Date.parse(started)),
          })],
        });
        task.log.info("Task completed", { attempt });
        return;
      } catch (error) {
        if (signal.aborted || error instanceof ClaimLostError) throw error;
        const message = error instanceof Error ? error.message : String(error);
        const retryable = isRetryable(error);
        if (!retryable || attempt >= this.options.maxAttempts) {
          task.log.warn("Task failed", { attempt, step, retryable, error: message });
          await this.#deadLetter(task, attempt, message, step, retryable);
          return;
        }
        const wait = error instanceof RetryableError && error.retryAfterMs !== undefined
          ? error.retryAfterMs
          : backoffMs(attempt, this.options.retryBaseMs, this.options.retryMaxMs);
        task.log.info("Task will retry", { attempt, step, error: message, retry_in_ms: wait });
        await append([this.#event("task.failed", {
          error: message,
          step,
          retryable: true,
          attempt,
          final: false,
          retry_in_ms: wait,
        })]);
        await sleep(wait, signal).catch(() => {
          throw new Aborted("Stopped during backoff");
        });
        attempt++;
      }
    }
  }

  async #deadLetter(
    task: { group: string; consumer: string; entryId: string; taskId: string; payload: string },
    attempt: number,
    error: string,
    step?: StepName,
    retryable = false,
  ): Promise<void> {
    await this.options.store.settle({
      group: task.group,
      consumer: task.consumer,
      entryId: task.entryId,
      taskId: task.taskId,
      mode: "dead",
      at: this.#iso(),
      events: [this.#event("task.failed", { error, step, retryable, attempt, final: true })],
      deadLetter: { error, attempts: attempt, payload: task.payload },
    });
  }

  /** Refreshes the claim every claimIdleMs/3; aborts the task if another worker took it. */
  #keepClaimFresh(entryId: string, parent: AbortSignal) {
    const { store, consumer, claimIdleMs } = this.options;
    const abort = new AbortController();
    const onParent = () => abort.abort(parent.reason);
    parent.addEventListener("abort", onParent, { once: true });
    const timer = setInterval(async () => {
      try {
        const ok = await heartbeatScript.run(store.redis, [store.keys.webhookStream], [
          WORKER_GROUP,
          consumer,
          entryId,
        ]);
        if (ok === 0) abort.abort(new ClaimLostError(`Entry "${entryId}" was reclaimed`));
      } catch {
        // Redis unreachable: keep going; the fenced writes decide whether our work counts.
      }
    }, Math.max(20, Math.floor(claimIdleMs / 3)));
    return {
      signal: abort.signal,
      stop: () => {
        clearInterval(timer);
        parent.removeEventListener("abort", onParent);
      },
    };
  }

  #iso(): string {
    return this.#now().toISOString();
  }

  #event<T extends TaskEvent["type"]>(
    type: T,
    data: Extract<TaskEvent, { type: T }>["data"],
  ): Omit<TaskEvent, "task_id"> {
    return { type, at: this.#iso(), data } as Omit<TaskEvent, "task_id">;
  }

  /**
   * Stops reading, lets in-flight tasks finish for up to `timeoutMs`, then aborts the rest, which
   * stay pending for another worker to reclaim.
   */
  async stop(timeoutMs: number): Promise<{ finished: number; abandoned: number }> {
    this.#stop.abort();
    this.#slotFreed?.();
    const running = [...this.#inflight.values()];
    let timer: ReturnType<typeof setTimeout> | undefined;
    const all = Promise.all(running.map((r) => r.done));
    const timedOut = await Promise.race([
      all.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    const abandoned = timedOut ? this.#inflight.size : 0;
    if (timedOut) {
      for (const r of this.#inflight.values()) r.abort.abort(new Aborted("Shutting down"));
      await all;
    }
    await this.#loop;
    return { finished: running.length - abandoned, abandoned };
  }
}

/** Outputs of steps a previous attempt completed, so a retry or redelivery does not redo them. */
function completedOutputs(history: StoredEvent[]): StepContext["outputs"] {
  const outputs: StepContext["outputs"] = {};
  for (const e of history) if (e.type === "step.completed") outputs[e.data.step] = e.data.output;
  return outputs;
}

function buildResult(outputs: StepContext["outputs"], revision: boolean): TaskResult {
  const reframe = outputs.reframe ?? {};
  const scenes = outputs.scenes ?? {};
  return {
    scenes: (scenes.scenes as Scene[] | undefined) ?? [],
    image_url: String(reframe.image_url ?? ""),
    reframed: Boolean(reframe.reframed),
    provider: { reframe: String(reframe.provider ?? ""), scenes: String(scenes.provider ?? "") },
    revision,
  };
}
