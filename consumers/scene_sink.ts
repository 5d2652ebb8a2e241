import type { Redis } from "ioredis";
import { ClaimLostError, type EventStore } from "../src/event_store.ts";
import { isRetryable } from "../src/errors.ts";
import { compareIds, entryType, type EventOf, requestEntryId } from "../src/events.ts";
import { GROUP_START, SINK_GROUP } from "../src/keys.ts";
import type { Logger } from "../src/log.ts";
import type { SceneRow } from "../src/providers/supabase_scenes.ts";
import type { StreamEntry } from "../src/redis/streams.ts";
import { retryDelayMs, sleep } from "../src/sleep.ts";
import { decodeOrSkip, GroupConsumer } from "./group_consumer.ts";
import { type Event, event } from "./task_worker.ts";

/** Where final scenes are stored. "redis-view" stores nothing: the video-scenes projection serves them. */
export interface SceneStore {
  name: "supabase" | "redis-view";
  upsert(rows: SceneRow[]): Promise<void>;
}

export interface SceneSinkOptions {
  store: EventStore;
  blocking: Redis;
  sink: SceneStore;
  log: Logger;
  consumer: string;
  concurrency: number;
  claimIdleMs: number;
  maxAttempts: number;
  retryBaseMs: number;
  retryMaxMs: number;
  clock?: () => Date;
}

/** Scene rows for a generated result: one per scene, keyed by (video_id, revision, scene_number). */
export function sceneRows(taskId: string, generated: EventOf<"scenes.generated">): SceneRow[] {
  const { result, video_id, user_id } = generated.data;
  return result.scenes.map((scene) => ({
    task_id: taskId,
    video_id,
    user_id,
    revision: result.video_revision,
    image_url: result.image_url,
    ...scene,
  }));
}

/**
 * The "scene-sink" group on the task event stream: stores each `scenes.generated` result (a
 * Supabase upsert, idempotent on video, revision and scene number) and then records the task as
 * completed, so "completed" means the scenes are stored. Failures retry with backoff; the last one
 * fails the task and dead-letters it.
 */
export class SceneSink {
  /** Its consumer-group loop: start and stop go through it. */
  readonly consumer: GroupConsumer;
  readonly #now: () => Date;

  constructor(readonly options: SceneSinkOptions) {
    this.#now = options.clock ?? (() => new Date());
    this.consumer = new GroupConsumer({
      redis: options.store.redis,
      blocking: options.blocking,
      stream: options.store.keys.eventStream,
      group: SINK_GROUP,
      consumer: options.consumer,
      concurrency: options.concurrency,
      claimIdleMs: options.claimIdleMs,
      startAt: GROUP_START[SINK_GROUP],
      log: options.log,
      ignores: (entry) => entryType(entry.fields) !== "scenes.generated",
      handle: (entry, signal) => this.#handle(entry, signal),
    });
  }

  async #handle(entry: StreamEntry, signal: AbortSignal): Promise<void> {
    const { store, sink, maxAttempts, consumer } = this.options;
    const generated = decodeOrSkip(entry);
    if (generated.type !== "scenes.generated") return;
    const taskId = generated.task_id;
    const log = this.options.log.child({ task_id: taskId });
    const settle = (mode: "append" | "ack", events: Event[]) =>
      store.settle({
        stream: store.keys.eventStream,
        group: SINK_GROUP,
        consumer,
        entryId: entry.id,
        taskId,
        mode,
        at: this.#iso(),
        events,
      });

    // On a first delivery nothing can follow the event yet: skip reading the timeline.
    const after = entry.reclaimed
      ? (await store.timeline(taskId)).filter((e) => compareIds(e.id, entry.id) > 0)
      : [];
    const callback = generated.data.callback;
    if (
      after.some((e) => e.type === "task.completed" || (e.type === "task.failed" && e.data.final))
    ) {
      await settle("ack", []);
      return;
    }
    let attempt =
      after.filter((e) => e.type === "step.started" && e.data.step === "persist").length +
      1;
    while (true) {
      if (attempt > maxAttempts) {
        await this.#deadLetter(
          entry.id,
          taskId,
          callback,
          attempt - 1,
          "Storing scenes kept being interrupted",
        );
        return;
      }
      await settle("append", [event("step.started", this.#iso(), { step: "persist", attempt })]);
      const t0 = performance.now();
      try {
        const rows = sceneRows(taskId, generated);
        await sink.upsert(rows);
        signal.throwIfAborted();
        const started = generated.data.started_at ?? generated.at;
        await settle("ack", [
          event("step.completed", this.#iso(), {
            step: "persist",
            attempt,
            duration_ms: Math.round((performance.now() - t0) * 100) / 100,
            output: {
              sink: sink.name,
              rows: rows.length,
              revision: generated.data.result.video_revision,
            },
          }),
          event("task.completed", this.#iso(), {
            video_id: generated.data.video_id,
            result: generated.data.result,
            duration_ms: Math.max(0, this.#now().getTime() - Date.parse(started)),
            callback,
          }),
        ]);
        log.info("Task completed", { sink: sink.name });
        return;
      } catch (error) {
        if (signal.aborted || error instanceof ClaimLostError) throw error;
        const message = error instanceof Error ? error.message : String(error);
        const retryable = isRetryable(error);
        if (!retryable || attempt >= maxAttempts) {
          log.warn("Storing scenes failed", { attempt, retryable, error: message });
          await this.#deadLetter(entry.id, taskId, callback, attempt, message, retryable);
          return;
        }
        const wait = retryDelayMs(
          error,
          attempt,
          this.options.retryBaseMs,
          this.options.retryMaxMs,
        );
        await settle("append", [event("task.failed", this.#iso(), {
          error: message,
          step: "persist",
          retryable: true,
          attempt,
          final: false,
          retry_in_ms: wait,
        })]);
        await sleep(wait, signal);
        attempt++;
      }
    }
  }

  async #deadLetter(
    entryId: string,
    taskId: string,
    callback: boolean | undefined,
    attempts: number,
    error: string,
    retryable = false,
  ) {
    const { store, consumer } = this.options;
    const requestEntry = requestEntryId(await store.timeline(taskId));
    const payload = requestEntry ? await store.payload(requestEntry) : "";
    await store.settle({
      stream: store.keys.eventStream,
      group: SINK_GROUP,
      consumer,
      entryId,
      taskId,
      mode: "dead",
      at: this.#iso(),
      events: [event("task.failed", this.#iso(), {
        error,
        step: "persist",
        retryable,
        attempt: attempts,
        final: true,
        callback,
      })],
      deadLetter: { error, attempts, payload },
    });
  }

  #iso(): string {
    return this.#now().toISOString();
  }
}
