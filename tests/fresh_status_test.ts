/**
 * Status fresh while the projector is behind: GET /task/{id} and the task stream's snapshot fold
 * the task's events the task view has not reached yet, with the projection's own evolve, and
 * arrive at exactly what the projector stores once it catches up.
 */
import assert from "node:assert/strict";
import { readTaskView } from "../src/projections/task_view/projection.ts";
import { catchUpTaskView, foldTaskView, type TaskView } from "../src/projections/task_view/view.ts";
import { caughtUp, fixture, runConsumers, type TestEnv, testEnv, waitFor } from "./_helpers.ts";

const ALL_BUT_PROJECTIONS = ["tasks", "scenes", "callbacks"] as const;

async function submit(env: TestEnv): Promise<string> {
  const res = await env.post(JSON.parse(await fixture("minimal.json")));
  assert.equal(res.status, 202);
  return (await res.json()).task_id as string;
}

async function getTask(env: TestEnv, taskId: string): Promise<TaskView> {
  const res = await env.services.app.request(`/task/${taskId}`);
  assert.equal(res.status, 200);
  return await res.json();
}

/** The snapshot frame of a task stream that ends (the task is over, no follow). */
async function streamSnapshot(
  env: TestEnv,
  taskId: string,
): Promise<{ id: string; view: TaskView }> {
  const res = await env.services.app.request(`/task/${taskId}/stream`);
  assert.equal(res.status, 200);
  const text = await res.text();
  const frame = text.split("\n\n").find((f) => f.includes("event: snapshot"));
  assert.ok(frame, text);
  const id = /^id: (.*)$/m.exec(frame)![1];
  const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
  return { id, view: JSON.parse(data.join("")) };
}

Deno.test("a completed task reads completed while its view still says queued", async () => {
  await using env = await testEnv("fresh-status");
  const { redis, keys, store } = env.services;
  // The projector folds task.queued, then stops: the stored view stays "queued".
  const projector = await runConsumers(env, {}, { ...env.config, CONSUMERS: ["projections"] });
  const taskId = await submit(env);
  try {
    await waitFor(() => readTaskView(redis, keys, taskId), { what: "the queued view" });
  } finally {
    await projector.stop(1_000);
  }
  const workers = await runConsumers(env, {}, {
    ...env.config,
    CONSUMERS: [...ALL_BUT_PROJECTIONS],
  });
  try {
    await waitFor(
      async () => (await store.timeline(taskId)).some((e) => e.type === "task.completed"),
      { what: "task.completed in the log" },
    );
  } finally {
    await workers.stop(1_000);
  }
  const stale = (await readTaskView(redis, keys, taskId))!;
  assert.equal(stale.status, "queued", "the projector is held back");
  const timeline = await store.timeline(taskId);

  const fresh = await getTask(env, taskId);
  assert.equal(fresh.status, "completed");
  assert.deepEqual(fresh, foldTaskView(taskId, timeline), "the same fold as from the log");
  assert.equal(fresh.last_event_id, timeline.at(-1)!.id);

  const snapshot = await streamSnapshot(env, taskId);
  assert.equal(snapshot.view.status, "completed");
  assert.deepEqual(snapshot.view, fresh);
  assert.equal(snapshot.id, fresh.last_event_id, "the snapshot's id is the last event it folds");

  // Once the projector catches up it stores exactly what was read.
  const again = await runConsumers(env, {}, { ...env.config, CONSUMERS: ["projections"] });
  try {
    await waitFor(() => caughtUp(redis, [keys.eventStream]), { what: "the projector" });
  } finally {
    await again.stop(1_000);
  }
  assert.deepEqual(await readTaskView(redis, keys, taskId), fresh);
  assert.deepEqual(await getTask(env, taskId), fresh, "an up-to-date view is answered as stored");
});

Deno.test("catching a view up folds only the events after its last one", () => {
  const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();
  const events = [
    {
      id: "1-0",
      type: "task.queued",
      at: at(0),
      task_id: "t",
      data: { video_id: "v", user_id: "u", is_revision: false, webhook_entry: "0-1" },
    },
    { id: "2-0", type: "task.started", at: at(1), task_id: "t", data: { attempt: 1, worker: "w" } },
    {
      id: "3-0",
      type: "step.started",
      at: at(2),
      task_id: "t",
      data: { step: "reframe", attempt: 1 },
    },
  ] as Parameters<typeof foldTaskView>[1];
  for (let k = 0; k <= events.length; k++) {
    const projected = k === 0 ? null : foldTaskView("t", events.slice(0, k));
    // Given the whole timeline (events it folded included), it folds each event once.
    assert.deepEqual(catchUpTaskView("t", projected, events), foldTaskView("t", events), `k=${k}`);
  }
  const full = foldTaskView("t", events);
  assert.equal(catchUpTaskView("t", full, events.slice(0, 2)), full, "older events change nothing");
});
