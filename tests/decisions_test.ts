/**
 * What the task worker, the scene sink and the callback sender do next, as pure functions of a
 * task's events: given these events, when this is delivered, then this decision. No Redis.
 */
import assert from "node:assert/strict";
import { decideCallback } from "../src/decisions/callback.ts";
import { announcesOutcome } from "../src/decisions/callback.ts";
import { decideSceneSink, processingMs, sceneRows } from "../src/decisions/scene_sink.ts";
import { decideTask } from "../src/decisions/task.ts";
import { type EventOf, type StoredEvent, type TaskEventType } from "../src/events.ts";
import type { TaskResult } from "../src/pipeline/scene.ts";
import { decideRetry, parseRetryAfter } from "../src/retry.ts";
import type { VideoRequest } from "../src/webhook.ts";

let seq = 0;
/** A stored event of task "t", with ids and times increasing in the order they are made. */
function ev<T extends TaskEventType>(type: T, data: EventOf<T>["data"]): EventOf<T> & StoredEvent {
  seq++;
  const at = new Date(Date.UTC(2026, 0, 1, 0, 0, seq)).toISOString();
  return { id: `${1_000 + seq}-0`, type, task_id: "t", at, data } as EventOf<T> & StoredEvent;
}

/** Given/when/then for a decider: the history, the decision function, the expected decision. */
function given(history: StoredEvent[]) {
  return {
    when: <D>(decide: (history: StoredEvent[]) => D) => ({
      then: (expected: Partial<D>) => assert.partialDeepStrictEqual(decide(history), expected),
    }),
  };
}

const queued = () =>
  ev("task.queued", { video_id: "v", user_id: "u", is_revision: false, webhook_entry: "1-0" });
const started = (attempt: number) => ev("task.started", { attempt, worker: "w" });
const completedStep = (step: "reframe" | "scenes", attempt = 1) =>
  ev("step.completed", { step, attempt, duration_ms: 1, output: { from: step } });
const failed = (final: boolean, attempt = 1) =>
  ev("task.failed", { error: "boom", retryable: !final, attempt, final });
const RESULT: TaskResult = {
  scenes: [{
    scene_number: 1,
    visual_description: "A shoe",
    voiceover: "Run",
    shot_type: "close-up",
    sound_effects: "",
    music_direction: "",
    duration_seconds: 5,
  }],
  image_url: "https://example.com/a.png",
  reframed: false,
  provider: { reframe: "offline", scenes: "offline" },
  revision: false,
  video_revision: 3,
};
const generated = (startedAt?: string) =>
  ev("scenes.generated", {
    video_id: "v",
    user_id: "u",
    result: RESULT,
    started_at: startedAt,
    callback: true,
  });
const reprocess = (run: number) =>
  ev("task.reprocess_requested", { run, requested_by: "op", reason: "fix", source: "replay" });

const task = (maxAttempts = 3) => (history: StoredEvent[]) => decideTask(history, { maxAttempts });

Deno.test("task: a first delivery runs attempt 1 with nothing done", () => {
  given([]).when(task()).then({ type: "run", attempt: 1, outputs: {} });
  given([queued()]).when(task()).then({ type: "run", attempt: 1, outputs: {} });
});

Deno.test("task: a redelivery resumes after the completed steps, as the next attempt", () => {
  const first = started(1);
  given([queued(), first, completedStep("reframe"), failed(false)]).when(task()).then({
    type: "run",
    attempt: 2,
    outputs: { reframe: { from: "reframe" } },
    startedAt: first.at,
  });
});

Deno.test("task: an outcome in the log means acknowledge and repeat nothing", () => {
  given([queued(), started(1), generated()]).when(task()).then({ type: "acknowledge" });
  given([queued(), started(1), failed(true)]).when(task()).then({ type: "acknowledge" });
});

Deno.test("task: attempts begun up to the limit without an outcome dead-letter it", () => {
  given([queued(), started(1), started(2), started(3)]).when(task(3)).then({
    type: "dead_letter",
    attempts: 3,
  });
  given([queued(), started(1), started(2)]).when(task(3)).then({ type: "run", attempt: 3 });
});

Deno.test("task: a reprocess starts a new run that keeps the stored revision", () => {
  const history = [queued(), started(1), completedStep("reframe"), generated(), reprocess(2)];
  given(history).when(task()).then({
    type: "run",
    attempt: 1,
    outputs: {},
    storedRevision: 3,
    startedAt: undefined,
  });
  // A failure that ended run 1 does not end run 2.
  given([queued(), started(1), failed(true), reprocess(2)]).when(task()).then({ type: "run" });
});

Deno.test("scene sink: a first delivery persists as attempt 1", () => {
  const g = generated();
  given([]).when((h) => decideSceneSink(g.id, h, { maxAttempts: 3 })).then({
    type: "persist",
    attempt: 1,
  });
});

Deno.test("scene sink: attempts count the persist steps begun after the event", () => {
  // A step.started before the event does not count.
  const before = ev("step.started", { step: "persist", attempt: 1 });
  const g = generated();
  const begun = () => ev("step.started", { step: "persist", attempt: 1 });
  const history = [before, g, begun(), begun()];
  given(history).when((h) => decideSceneSink(g.id, h, { maxAttempts: 3 })).then({
    type: "persist",
    attempt: 3,
  });
  given([...history, begun()]).when((h) => decideSceneSink(g.id, h, { maxAttempts: 3 })).then({
    type: "dead_letter",
    attempts: 3,
  });
});

Deno.test("scene sink: a task completed or failed after the event is acknowledged", () => {
  const g = generated();
  const done = ev("task.completed", {
    video_id: "v",
    result: RESULT,
    duration_ms: 1,
    callback: true,
  });
  for (const outcome of [done, failed(true)]) {
    given([g, outcome]).when((h) => decideSceneSink(g.id, h, { maxAttempts: 3 })).then({
      type: "acknowledge",
    });
  }
});

Deno.test("scene sink: rows are keyed by video, revision and scene; time runs from the first start", () => {
  const g = generated("2026-01-01T00:00:00.000Z");
  const [row] = sceneRows(g);
  assert.deepEqual(
    [row.task_id, row.video_id, row.user_id, row.revision, row.scene_number],
    ["t", "v", "u", 3, 1],
  );
  assert.equal(processingMs(g, new Date("2026-01-01T00:00:02.500Z")), 2_500);
});

const REQUEST = {
  video_id: "v",
  user_id: "u",
  callback_url: "https://hooks.example.com/done",
  is_revision: false,
} as VideoRequest;

Deno.test("callback: a final outcome with a callback_url is delivered as attempt 1", () => {
  const outcome = failed(true);
  given([queued(), outcome]).when((h) => decideCallback(outcome, h, REQUEST)).then({
    type: "deliver",
    url: REQUEST.callback_url,
    webhookId: `t.${outcome.id}`,
    attempt: 1,
  });
  const decision = decideCallback(outcome, [], REQUEST);
  assert.equal(decision.type === "deliver" && JSON.parse(decision.body).status, "failed");
});

Deno.test("callback: no callback_url, a retrying failure or a settled delivery is acknowledged", () => {
  const outcome = failed(true);
  const ack = { type: "acknowledge" as const };
  given([outcome]).when((h) => decideCallback(outcome, h, { ...REQUEST, callback_url: undefined }))
    .then(ack);
  const retrying = failed(false);
  given([retrying]).when((h) => decideCallback(retrying, h, REQUEST)).then(ack);
  given([outcome]).when((h) => decideCallback(outcome, h, null)).then(ack);
  const delivered = ev("callback.delivered", {
    webhook_id: `t.${outcome.id}`,
    attempts: 2,
    status_code: 200,
  });
  given([outcome, delivered]).when((h) => decideCallback(outcome, h, REQUEST)).then(ack);
});

Deno.test("callback: attempts of this outcome's webhook-id count, other outcomes' do not", () => {
  const first = failed(true);
  const attemptOf = (webhookId: string) =>
    ev("callback.attempted", {
      webhook_id: webhookId,
      attempt: 1,
      status_code: 503,
      error: "down",
      retry_in_ms: 10,
    });
  const outcome = failed(true);
  const history = [first, attemptOf(`t.${first.id}`), outcome, attemptOf(`t.${outcome.id}`)];
  given(history).when((h) => decideCallback(outcome, h, REQUEST)).then({ attempt: 2 });
});

Deno.test("callback: an outcome older than the maximum age expires instead of being sent", () => {
  const outcome = failed(true);
  const at = Date.parse(outcome.at);
  const limits = (ageMs: number) => ({ now: new Date(at + ageMs), maxAgeMs: 3_600_000 });
  given([queued(), outcome]).when((h) => decideCallback(outcome, h, REQUEST, limits(3_600_000)))
    .then({ type: "deliver", attempt: 1 });
  given([queued(), outcome]).when((h) => decideCallback(outcome, h, REQUEST, limits(3_600_001)))
    .then({ type: "expire", webhookId: `t.${outcome.id}`, attempts: 0, ageMs: 3_600_001 });
  // Attempts made before it grew too old are counted; a settled one stays acknowledged.
  const attempted = ev("callback.attempted", {
    webhook_id: `t.${outcome.id}`,
    attempt: 1,
    status_code: 503,
    error: "HTTP 503",
    retry_in_ms: 10,
  });
  given([outcome, attempted]).when((h) => decideCallback(outcome, h, REQUEST, limits(7_200_000)))
    .then({ type: "expire", attempts: 1 });
  const gaveUp = ev("callback.failed", {
    webhook_id: `t.${outcome.id}`,
    attempts: 1,
    error: "expired",
  });
  given([outcome, attempted, gaveUp])
    .when((h) => decideCallback(outcome, h, REQUEST, limits(7_200_000)))
    .then({ type: "acknowledge" });
  // Without a callback_url nothing expires: there was nothing to send.
  given([outcome]).when((h) =>
    decideCallback(outcome, h, { ...REQUEST, callback_url: undefined }, limits(7_200_000))
  ).then({ type: "acknowledge" });
});

Deno.test("callback: raw entries that cannot need a callback are skipped unread", () => {
  const raw = (
    e: StoredEvent,
  ) => ["type", e.type, "task_id", e.task_id, "at", e.at, "data", JSON.stringify(e.data)];
  assert.equal(announcesOutcome(raw(started(1))), false);
  assert.equal(announcesOutcome(raw(failed(false))), false);
  assert.equal(announcesOutcome(raw(failed(true))), true);
  const noCallback = ev("task.completed", {
    video_id: "v",
    result: RESULT,
    duration_ms: 1,
    callback: false,
  });
  assert.equal(announcesOutcome(raw(noCallback)), false);
});

Deno.test("retry: give up when unrecoverable or out of attempts, else wait as asked or back off", () => {
  const policy = { maxAttempts: 3, baseMs: 100, maxMs: 1_000 };
  assert.deepEqual(decideRetry(1, { retryable: false }, policy), { type: "give_up" });
  assert.deepEqual(decideRetry(3, { retryable: true }, policy), { type: "give_up" });
  assert.deepEqual(decideRetry(1, { retryable: true, retryAfterMs: 7 }, policy), {
    type: "retry",
    waitMs: 7,
  });
  // Backoff with equal jitter: attempt 2 waits between 100 and 200 ms.
  assert.deepEqual(decideRetry(2, { retryable: true }, policy, () => 0), {
    type: "retry",
    waitMs: 100,
  });
  assert.deepEqual(decideRetry(2, { retryable: true }, policy, () => 1), {
    type: "retry",
    waitMs: 200,
  });
});

Deno.test("retry: Retry-After is read as ms, seconds or an HTTP date", () => {
  const headers = (init: Record<string, string>) => new Headers(init);
  assert.equal(parseRetryAfter(headers({ "retry-after-ms": "250", "retry-after": "9" })), 250);
  assert.equal(parseRetryAfter(headers({ "retry-after": "2" })), 2_000);
  assert.equal(parseRetryAfter(headers({ "retry-after": "-3" })), 0);
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(
    parseRetryAfter(headers({ "retry-after": "Thu, 01 Jan 2026 00:00:05 GMT" }), now),
    5_000,
  );
  assert.equal(parseRetryAfter(headers({ "retry-after": "soon" })), undefined);
  assert.equal(parseRetryAfter(null), undefined);
});
