import type { EventStore } from "../src/event_store.ts";
import { entryType, event, type EventOf, requestEntryId } from "../src/events.ts";
import { decideSceneSink, processingMs, sceneRows } from "../src/decisions/scene_sink.ts";
import type { SceneRow } from "../src/pipeline/scene.ts";
import type { RetryPolicy } from "../src/retry.ts";
import { decodeOrSkip } from "./group_consumer.ts";
import type { Delivery, Handler } from "./delivery.ts";

/** Where final scenes are stored. "redis-view" stores nothing: the video-scenes projection serves them. */
export interface SceneStore {
  name: "supabase" | "redis-view";
  upsert(rows: SceneRow[]): Promise<void>;
}

export interface SceneSinkOptions {
  store: EventStore;
  scenes: SceneStore;
  policy: RetryPolicy;
  clock: () => Date;
}

const ms = (t0: number) => Math.round((performance.now() - t0) * 100) / 100;

/**
 * The scene sink, the "scene-sink" group on the task event stream: stores each `scenes.generated`
 * result (a Supabase upsert, idempotent on video, revision and scene number) as the task's
 * `persist` step, and then records the task as completed, so "completed" means the scenes are
 * stored. Failures retry with backoff; the last one fails the task and dead-letters it.
 */
export function sceneSink(options: SceneSinkOptions): Handler {
  return {
    ignores: (entry) => entryType(entry.fields) !== "scenes.generated",
    async handle(delivery) {
      const generated = decodeOrSkip(delivery.entry);
      if (generated.type !== "scenes.generated") return;
      // On a first delivery nothing can follow the event yet: its timeline is not read.
      const history = delivery.entry.reclaimed
        ? await options.store.timeline(generated.task_id)
        : [];
      await persist(delivery, generated, history, options);
    },
  };
}

async function persist(
  delivery: Delivery,
  generated: EventOf<"scenes.generated">,
  history: Awaited<ReturnType<EventStore["timeline"]>>,
  { store, scenes, policy, clock }: SceneSinkOptions,
): Promise<void> {
  const taskId = generated.task_id;
  const log = delivery.log.child({ task_id: taskId });
  const callback = generated.data.callback;
  const deadLetter = async (attempts: number, error: string, retryable = false) => {
    const requestEntry = requestEntryId(await store.timeline(taskId));
    const payload = requestEntry ? await store.payload(requestEntry) : "";
    await delivery.deadLetter(taskId, { error, attempts, payload }, [
      event("task.failed", delivery.now(), {
        error,
        step: "persist",
        retryable,
        attempt: attempts,
        final: true,
        callback,
      }),
    ]);
  };
  const decision = decideSceneSink(delivery.entry.id, history, { maxAttempts: policy.maxAttempts });
  if (decision.type === "acknowledge") {
    await delivery.settle(taskId, "ack");
    return;
  }
  if (decision.type === "dead_letter") {
    await deadLetter(decision.attempts, decision.error);
    return;
  }
  await delivery.attempts({
    first: decision.attempt,
    policy,
    async begin(attempt) {
      await delivery.settle(taskId, "append", [
        event("step.started", delivery.now(), { step: "persist", attempt }),
      ]);
    },
    async run(attempt) {
      const t0 = performance.now();
      const rows = sceneRows(generated);
      await scenes.upsert(rows);
      delivery.signal.throwIfAborted();
      await delivery.settle(taskId, "ack", [
        event("step.completed", delivery.now(), {
          step: "persist",
          attempt,
          duration_ms: ms(t0),
          output: {
            sink: scenes.name,
            rows: rows.length,
            revision: generated.data.result.video_revision,
          },
        }),
        event("task.completed", delivery.now(), {
          video_id: generated.data.video_id,
          result: generated.data.result,
          duration_ms: processingMs(generated, clock()),
          callback,
        }),
      ]);
      log.info("Task completed", { sink: scenes.name });
    },
    async retrying(failure, attempt, waitMs) {
      await delivery.settle(taskId, "append", [
        event("task.failed", delivery.now(), {
          error: failure.message,
          step: "persist",
          retryable: true,
          attempt,
          final: false,
          retry_in_ms: waitMs,
        }),
      ]);
    },
    async givingUp(failure, attempt) {
      log.warn("Storing scenes failed", {
        attempt,
        retryable: failure.retryable,
        error: failure.message,
      });
      await deadLetter(attempt, failure.message, failure.retryable);
    },
  });
}
