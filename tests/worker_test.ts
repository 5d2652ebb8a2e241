import assert from "node:assert/strict";
import { RetryableError, UnrecoverableError } from "../src/errors.ts";
import type { StepName } from "../src/events.ts";
import { bindPipeline, type Pipeline } from "../src/pipeline/steps.ts";
import type { Step } from "../src/pipeline/step.ts";
import { readTaskView } from "../src/projections/task_view/projection.ts";
import { readVideoView } from "../src/projections/video_scenes/projection.ts";
import { GroupConsumer } from "../consumers/group_consumer.ts";
import { connectRedis, waitReady } from "../src/redis/client.ts";
import { groupInfo } from "../src/redis/streams.ts";
import { createPipeline, createPorts } from "../src/runtime.ts";
import {
  caughtUp,
  fixture,
  readStream,
  runConsumers,
  type TestEnv,
  testEnv,
  waitFor,
} from "./_helpers.ts";

async function settledView(env: TestEnv, taskId: string) {
  const { redis, keys } = env.services;
  await waitFor(() => caughtUp(redis, [keys.webhookStream, keys.eventStream]), {
    what: "consumers caught up",
  });
  return await waitFor(async () => {
    const view = await readTaskView(redis, keys, taskId);
    return view && (view.status === "completed" || view.status === "failed") ? view : null;
  }, { what: `task ${taskId} settled` });
}

async function submit(env: TestEnv, name = "minimal.json", patch: object = {}) {
  const body = { ...JSON.parse(await fixture(name)), ...patch };
  const res = await env.post(body);
  assert.equal(res.status, 202);
  return (await res.json()).task_id as string;
}

async function eventTypes(env: TestEnv, taskId: string) {
  return (await env.services.store.timeline(taskId)).map((e) => e.type);
}

/** The offline pipeline with one step replaced. */
function withStep(env: TestEnv, name: StepName, run: Step["run"]): Pipeline {
  return createPipeline(env.config, env.services).map((s) => s.name === name ? { name, run } : s);
}

Deno.test("the new-video fixture completes with its five scenes and voiceovers", async () => {
  await using env = await testEnv("e2e");
  const consumers = await runConsumers(env);
  try {
    const taskId = await submit(env, "new-video.json");
    const view = await settledView(env, taskId);
    assert.equal(view.status, "completed");
    assert.equal(view.attempts, 1);
    assert.equal(view.result?.scenes.length, 5);
    assert.equal(view.result?.scenes[2].voiceover, "Pulse foam gives back every step.");
    assert.deepEqual(view.result?.provider, { reframe: "offline", scenes: "offline" });
    assert.equal(view.result?.reframed, false);
    assert.deepEqual(Object.keys(view.steps).sort(), ["persist", "reframe", "scenes"]);
    const types = await eventTypes(env, taskId);
    assert.deepEqual(types.slice(0, types.indexOf("task.completed") + 1), [
      "task.queued",
      "task.started",
      ...["reframe", "scenes"].flatMap(() => ["step.started", "step.completed"]),
      "scenes.generated",
      "step.started",
      "step.completed",
      "task.completed",
    ]);
    // The fixture's callback host does not resolve here: retried, then recorded as failed,
    // without touching the task's own status.
    await waitFor(async () => (await eventTypes(env, taskId)).includes("callback.failed"));
    await waitFor(() => caughtUp(env.services.redis, [env.services.keys.eventStream]));
    const after = await (await env.services.app.request(`/task/${taskId}`)).json();
    assert.equal(after.status, "completed");
    assert.equal(after.callback.state, "failed");
    assert.equal(after.callback.attempts, env.config.CALLBACK_MAX_ATTEMPTS);
    // The public view says why in a few words; the host it tried is only in the admin API and log.
    assert.equal(after.callback.last_error, "connection failed: host not found");
    const video = await readVideoView(env.services.redis, env.services.keys, "vid_01JD8Q3ZK5M2A7");
    assert.equal(video?.revision, 1);
    assert.equal(video?.scenes.length, 5);
    const scenes = await env.services.app.request("/videos/vid_01JD8Q3ZK5M2A7/scenes");
    assert.equal((await scenes.json()).task_id, taskId);
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("a revision builds on the latest scenes and becomes revision 2", async () => {
  await using env = await testEnv("revision");
  const consumers = await runConsumers(env);
  try {
    await settledView(env, await submit(env, "new-video.json"));
    const view = await settledView(env, await submit(env, "revision.json"));
    assert.equal(view.status, "completed");
    assert.equal(view.result?.revision, true);
    const video = await readVideoView(env.services.redis, env.services.keys, "vid_01JD8Q3ZK5M2A7");
    assert.equal(video?.revision, 2);
    assert.match(video!.scenes[2].visual_description, /revised/);
    assert.doesNotMatch(video!.scenes[0].visual_description, /revised/);
    const orphan = await settledView(
      env,
      await submit(env, "revision.json", { video_id: "never-made", idempotency_key: "x" }),
    );
    assert.equal(orphan.status, "failed");
    assert.match(orphan.error!.message, /has no scenes to revise/);
    assert.equal(orphan.error!.retryable, false);
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("two revisions of one video at once get distinct revision numbers", async () => {
  await using env = await testEnv("revision-race", { OFFLINE_LATENCY_MS: "150" });
  const consumers = await runConsumers(env);
  try {
    await settledView(env, await submit(env, "new-video.json"));
    // Both read the latest stored revision (1) before either is stored.
    const ids = await Promise.all(
      ["a", "b"].map((key) => submit(env, "revision.json", { idempotency_key: `race-${key}` })),
    );
    const views = await Promise.all(ids.map((id) => settledView(env, id)));
    const revisions = views.map((v) => v.result?.video_revision).sort();
    assert.deepEqual(revisions, [2, 3]);
    const video = await readVideoView(env.services.redis, env.services.keys, "vid_01JD8Q3ZK5M2A7");
    assert.equal(video?.revision, 3);
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("retryable failures back off and retry until the step succeeds", async () => {
  await using env = await testEnv("retry", { MAX_ATTEMPTS: "5", RETRY_BASE_MS: "40" });
  let calls = 0;
  const times: number[] = [];
  const pipeline = withStep(env, "scenes", ({ request }) => {
    times.push(performance.now());
    if (++calls < 3) return Promise.reject(new RetryableError("Provider answered 503"));
    return Promise.resolve({ scenes: [], provider: `flaky:${request.video_id}` });
  });
  const consumers = await runConsumers(env, { pipeline });
  try {
    const taskId = await submit(env);
    const view = await settledView(env, taskId);
    assert.equal(view.status, "completed");
    assert.equal(view.attempts, 3);
    assert.equal(calls, 3);
    // Backoff: at least half of 40 ms, then of 80 ms.
    assert.ok(times[1] - times[0] >= 20, `first wait ${times[1] - times[0]}`);
    assert.ok(times[2] - times[1] >= 40, `second wait ${times[2] - times[1]}`);
    const events = await env.services.store.timeline(taskId);
    const failures = events.filter((e) => e.type === "task.failed");
    assert.equal(failures.length, 2);
    // The reframe step completed once and was not repeated by the retries.
    const reframes = events.filter((e) => e.type === "step.completed" && e.data.step === "reframe");
    assert.equal(reframes.length, 1);
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("after the last attempt the task is dead-lettered and shows failed", async () => {
  await using env = await testEnv("dead", { MAX_ATTEMPTS: "3", RETRY_BASE_MS: "5" });
  let calls = 0;
  const pipeline = withStep(env, "reframe", () => {
    calls++;
    return Promise.reject(new RetryableError("Timed out after 5 s"));
  });
  const consumers = await runConsumers(env, { pipeline });
  try {
    const taskId = await submit(env);
    const view = await settledView(env, taskId);
    assert.equal(view.status, "failed");
    assert.equal(calls, 3);
    assert.equal(view.error?.message, "Timed out after 5 s");
    assert.equal(view.error?.step, "reframe");
    const dead = await readStream(env.services.redis, env.services.keys.deadLetterStream);
    assert.equal(dead.length, 1);
    assert.equal(dead[0].task_id, taskId);
    assert.equal(dead[0].attempts, "3");
    assert.equal(view.dead_letter_entry, dead[0].id);
    assert.equal(JSON.parse(dead[0].payload).video_id, "vid_min_001");
    const stats = await (await env.services.app.request("/stats")).json();
    assert.equal(stats.failed_tasks, 1);
    assert.equal(stats.dead_lettered_tasks, 1);
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("an unrecoverable failure fails at once without retries", async () => {
  await using env = await testEnv("unrecoverable", { MAX_ATTEMPTS: "5" });
  let calls = 0;
  const pipeline = withStep(env, "scenes", () => {
    calls++;
    return Promise.reject(new UnrecoverableError("Provider rejected the image: 422"));
  });
  const consumers = await runConsumers(env, { pipeline });
  try {
    const view = await settledView(env, await submit(env));
    assert.equal(view.status, "failed");
    assert.equal(view.attempts, 1);
    assert.equal(calls, 1);
    assert.equal(view.error?.retryable, false);
    assert.equal(await env.services.redis.xlen(env.services.keys.deadLetterStream), 1);
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("malformed work entries are dead-lettered and the worker keeps running", async () => {
  await using env = await testEnv("poison");
  const { redis, keys } = env.services;
  const consumers = await runConsumers(env);
  try {
    await redis.xadd(keys.webhookStream, "*", "garbage", "1");
    await redis.xadd(keys.webhookStream, "*", "task_id", "t-bad-json", "payload", "{nope");
    await redis.xadd(keys.webhookStream, "*", "task_id", "t-bad-shape", "payload", '{"prompt":1}');
    const taskId = await submit(env);
    const view = await settledView(env, taskId);
    assert.equal(view.status, "completed");
    const dead = await readStream(redis, keys.deadLetterStream);
    assert.deepEqual(dead.map((d) => d.task_id), ["", "t-bad-json", "t-bad-shape"]);
    assert.match(dead[1].error, /not JSON/);
    const badShape = await env.services.app.request("/task/t-bad-shape");
    assert.equal((await badShape.json()).status, "failed");
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("malformed outcome events are skipped by the scene sink and the callback sender", async () => {
  await using env = await testEnv("poison-events");
  const { redis, keys } = env.services;
  const consumers = await runConsumers(env);
  try {
    const bad = (type: string, data: string) =>
      redis.xadd(keys.eventStream, "*", "type", type, "task_id", "t-bad", "at", "x", "data", data);
    await bad("scenes.generated", "{nope");
    await bad("task.completed", '{"video_id":1}');
    const view = await settledView(env, await submit(env));
    assert.equal(view.status, "completed");
    await waitFor(async () => {
      const groups = await groupInfo(redis, keys.eventStream);
      return ["scene-sink", "callbacks"].every((name) => {
        const g = groups.find((i) => i.name === name);
        return g?.pending === 0 && g.lag === 0;
      });
    }, { what: "both groups to acknowledge everything" });
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("a scene sink started after a tasks-only worker still stores what it generated", async () => {
  await using env = await testEnv("split-order");
  const tasksOnly = await runConsumers(env, { run: ["tasks"] });
  let sinkOnly;
  try {
    const taskId = await submit(env);
    await waitFor(async () => (await eventTypes(env, taskId)).includes("scenes.generated"), {
      what: "the worker to generate scenes",
    });
    sinkOnly = await runConsumers(env, { run: ["scenes", "callbacks", "projections"] });
    const view = await settledView(env, taskId);
    assert.equal(view.status, "completed");
  } finally {
    await tasksOnly.stop(1_000);
    await sinkOnly?.stop(1_000);
  }
});

Deno.test("graceful stop lets in-flight tasks finish, then leaves the rest pending", async () => {
  await using env = await testEnv("graceful", { OFFLINE_LATENCY_MS: "60" });
  const { redis, keys } = env.services;
  const first = await runConsumers(env);
  const taskId = await submit(env);
  await waitFor(async () => (await eventTypes(env, taskId)).includes("step.started"));
  const outcome = await first.stop(5_000);
  assert.equal(outcome.abandoned, 0);
  assert.ok(outcome.finished >= 1);
  // The worker's part is done and acknowledged (the sink may finish it here or in the next run).
  assert.ok((await eventTypes(env, taskId)).includes("scenes.generated"));
  assert.equal((await redis.xpending(keys.webhookStream, "workers"))[0], 0);

  // Slow steps and a short timeout: the task is abandoned, left pending, then finished by another.
  const slow = bindPipeline({ ...env.config, OFFLINE_LATENCY_MS: 400 }, "offline", {
    videos: {
      latest: () => Promise.resolve(null),
      claimRevision: (_, n) => Promise.resolve(n + 1),
    },
  });
  const second = await runConsumers(env, { pipeline: slow });
  const slowTask = await submit(env, "minimal.json", { video_id: "slow" });
  await waitFor(async () => (await eventTypes(env, slowTask)).includes("step.started"));
  // At least the slow task is abandoned (the sink may also be busy with the first task's scenes).
  assert.ok((await second.stop(50)).abandoned >= 1);
  assert.ok(!(await eventTypes(env, slowTask)).includes("scenes.generated"));
  assert.equal((await redis.xpending(keys.webhookStream, "workers"))[0], 1);
  assert.ok(!(await eventTypes(env, slowTask)).includes("task.completed"));

  const third = await runConsumers(env, {}, { ...env.config, CLAIM_IDLE_MS: 100 });
  try {
    const view = await settledView(env, slowTask);
    assert.equal(view.status, "completed");
    assert.equal((await settledView(env, taskId)).status, "completed");
    const types = await eventTypes(env, slowTask);
    assert.equal(types.filter((t) => t === "task.completed").length, 1);
  } finally {
    await third.stop(1_000);
  }
});

Deno.test("a consumer whose blocking connection is killed mid-read keeps consuming", async () => {
  await using env = await testEnv("conn-kill");
  const { redis } = env.services;
  const stream = `{${env.prefix}}:kill-test`;
  const blocking = connectRedis(env.config.REDIS_URL, { name: "kill-test" });
  await waitReady(blocking);
  const handled: string[] = [];
  const consumer = new GroupConsumer({
    redis,
    blocking,
    stream,
    group: "g",
    consumer: "c",
    concurrency: 2,
    claimIdleMs: 60_000,
    log: env.log,
    handle: async (entry) => {
      handled.push(entry.id);
      await redis.xack(stream, "g", entry.id);
    },
  });
  await consumer.start();
  try {
    const first = await redis.xadd(stream, "*", "n", "1");
    await waitFor(() => handled.includes(first!), { what: "the first entry" });
    // Kill the connection while it blocks in XREADGROUP; ioredis reconnects.
    const id = await blocking.client("ID");
    await new Promise((resolve) => setTimeout(resolve, 50));
    await redis.client("KILL", "ID", String(id));
    const second = await redis.xadd(stream, "*", "n", "2");
    await waitFor(() => handled.includes(second!), {
      what: "the entry added after the reconnect",
      timeoutMs: 8_000,
    });
  } finally {
    // A consumer stuck behind a lost read never stops: do not hang the suite on it.
    const stuck = new Promise((resolve) => setTimeout(resolve, 3_000, "stuck"));
    const stopped = await Promise.race([consumer.stop(1_000), stuck]);
    blocking.disconnect();
    await redis.del(stream);
    assert.notEqual(stopped, "stuck", "the consumer stops");
  }
});

Deno.test("a task claims one revision however often its scenes step runs; another task the next", async () => {
  await using env = await testEnv("revision-claim");
  const { videos } = createPorts(env.config, env.services);
  assert.equal(await videos.claimRevision("v", 0, "task-a"), 1);
  // The step ran again (its worker died before saving it): the same number, no gap.
  assert.equal(await videos.claimRevision("v", 0, "task-a"), 1);
  assert.equal(await videos.claimRevision("v", 0, "task-b"), 2);
  // Above the latest stored revision too.
  assert.equal(await videos.claimRevision("v", 7, "task-c"), 8);
});
