import type { EventStore } from "../src/event_store.ts";
import { event, fieldsToRecord, type NewEvent, type StepName } from "../src/events.ts";
import { decideTask } from "../src/decisions/task.ts";
import { buildResult, type Pipeline } from "../src/pipeline/steps.ts";
import type { RetryPolicy } from "../src/retry.ts";
import { parseVideoRequest, type VideoRequest } from "../src/webhook.ts";
import type { Delivery, Handler } from "./delivery.ts";

export interface TaskWorkerOptions {
  store: EventStore;
  pipeline: Pipeline;
  policy: RetryPolicy;
}

const ms = (t0: number) => Math.round((performance.now() - t0) * 100) / 100;

const _workerIds = new Map<string, string>();

/**
 * The opaque id `task.started` names a worker by: random, one per consumer (so per process), and
 * never the consumer name, which holds the hostname and pid. Events are public reads; the
 * start-up log ("Consumers started") maps the id to the consumer name for operators.
 */
export function workerId(consumer: string): string {
  let id = _workerIds.get(consumer);
  if (id === undefined) {
    id = `w-${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    _workerIds.set(consumer, id);
  }
  return id;
}

/**
 * The "workers" group on the webhook stream: runs the pipeline's steps for each task. Its outcome
 * is `scenes.generated`, which the scene sink turns into stored scenes and `task.completed`.
 *
 * At-least-once with effects once: the outcome event and the XACK are one script, every write is
 * fenced on still owning the entry, and a redelivered task resumes after its last completed step,
 * reusing the recorded outputs (what to do is `decideTask`, a pure function of the task's events).
 */
export function taskWorker({ store, pipeline, policy }: TaskWorkerOptions): Handler {
  return {
    async handle(delivery) {
      const record: Record<string, string | undefined> = fieldsToRecord(delivery.entry.fields);
      const taskId = record.task_id ?? "";
      let request: VideoRequest;
      try {
        const parsed = parseVideoRequest(JSON.parse(record.payload ?? ""));
        if (!parsed.success) throw parsed.error;
        request = parsed.data;
      } catch (error) {
        const reason = error instanceof SyntaxError ? "payload is not JSON" : "payload is invalid";
        delivery.log.error("Dead-lettering a malformed entry", {
          entry: delivery.entry.id,
          task_id: taskId,
          reason,
        });
        const message = `Malformed work entry: ${reason}`;
        await delivery.deadLetter(
          taskId,
          { error: message, attempts: 0, payload: JSON.stringify(record) },
          taskId ? [finalFailure(delivery, { error: message, attempt: 0, callback: false })] : [],
        );
        return;
      }
      // A first delivery of a task's first run: nothing can have happened to it yet, so its
      // timeline (a round trip per task) is not read.
      const fresh = !delivery.entry.reclaimed && record.run === undefined;
      await runTask(delivery, {
        store,
        pipeline,
        policy,
        taskId,
        request,
        payload: record.payload!,
        history: fresh ? [] : await store.timeline(taskId),
      });
    },
  };
}

interface Task extends TaskWorkerOptions {
  taskId: string;
  request: VideoRequest;
  payload: string;
  history: Awaited<ReturnType<EventStore["timeline"]>>;
}

async function runTask(delivery: Delivery, task: Task): Promise<void> {
  const { taskId, request, pipeline, policy } = task;
  const log = delivery.log.child({ task_id: taskId });
  const callback = Boolean(request.callback_url);
  const decision = decideTask(task.history, { maxAttempts: policy.maxAttempts });
  if (decision.type === "acknowledge") {
    await delivery.settle(taskId, "ack");
    return;
  }
  const deadLetter = (attempts: number, error: string, extra: Partial<Failed> = {}) =>
    delivery.deadLetter(
      taskId,
      { error, attempts, payload: task.payload },
      [
        ...(extra.before ?? []),
        finalFailure(delivery, { error, attempt: attempts, callback, ...extra }),
      ],
    );
  if (decision.type === "dead_letter") {
    await deadLetter(decision.attempts, decision.error);
    return;
  }

  const { outputs } = decision;
  let startedAt = decision.startedAt;
  let step: StepName | undefined;
  // Events wait for the next settle when nothing runs in between: task.started goes with the
  // first step.started, each step.completed with the next step.started (or the outcome), so a
  // task takes one fenced script per step instead of two.
  let carry: NewEvent[] = [];
  // A step.completed still waiting for its settle (the settle itself failed) goes in with the
  // failure, so a later attempt or another worker does not redo that step.
  const unsaved = () => carry.filter((e) => e.type === "step.completed");

  await delivery.attempts({
    first: decision.attempt,
    policy,
    async run(attempt) {
      const at = delivery.now();
      startedAt ??= at;
      carry = [event("task.started", at, { attempt, worker: workerId(delivery.options.consumer) })];
      step = undefined;
      for (const s of pipeline) {
        if (outputs[s.name]) continue;
        step = s.name;
        await delivery.settle(taskId, "append", [
          ...carry,
          event("step.started", delivery.now(), { step: s.name, attempt }),
        ]);
        carry = [];
        const t0 = performance.now();
        const output = await s.run({
          taskId,
          request,
          attempt,
          outputs,
          signal: delivery.signal,
          storedRevision: decision.storedRevision,
        });
        delivery.signal.throwIfAborted();
        outputs[s.name] = output;
        carry = [event("step.completed", delivery.now(), {
          step: s.name,
          attempt,
          duration_ms: ms(t0),
          output,
        })];
      }
      await delivery.settle(taskId, "ack", [
        ...carry,
        event("scenes.generated", delivery.now(), {
          video_id: request.video_id,
          user_id: request.user_id,
          result: buildResult(outputs, request.is_revision),
          started_at: startedAt,
          callback,
        }),
      ]);
      log.info("Scenes generated", { attempt });
    },
    async retrying(failure, attempt, waitMs) {
      log.info("Task will retry", { attempt, step, error: failure.message, retry_in_ms: waitMs });
      await delivery.settle(taskId, "append", [
        ...unsaved(),
        event("task.failed", delivery.now(), {
          error: failure.message,
          step,
          retryable: true,
          attempt,
          final: false,
          retry_in_ms: waitMs,
        }),
      ]);
    },
    async givingUp(failure, attempt) {
      const { message, retryable } = failure;
      log.warn("Task failed", { attempt, step, retryable, error: message });
      await deadLetter(attempt, message, { step, retryable, before: unsaved() });
    },
  });
}

interface Failed {
  error: string;
  attempt: number;
  callback: boolean;
  step?: StepName;
  retryable?: boolean;
  before?: NewEvent[];
}

/** The task.failed event that ends a task for good. */
function finalFailure(delivery: Delivery, failed: Failed): NewEvent {
  return event("task.failed", delivery.now(), {
    error: failed.error,
    step: failed.step,
    retryable: failed.retryable ?? false,
    attempt: failed.attempt,
    final: true,
    callback: failed.callback,
  });
}
