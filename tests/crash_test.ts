import assert from "node:assert/strict";
import { bindPipeline } from "../src/pipeline/steps.ts";
import { taskViewKey } from "../src/projections/task_view/view.ts";
import { groupInfo } from "../src/redis/streams.ts";
import { childEnv, fixture, runConsumers, type TestEnv, testEnv, waitFor } from "./_helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

function spawnWorker(env: TestEnv, extra: Record<string, string>) {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, "worker"],
    clearEnv: true,
    env: { ...childEnv(), KEY_PREFIX: env.prefix, LOG_LEVEL: "warn", ...extra },
    stdout: "null",
    stderr: "piped",
  }).spawn();
}

async function submit(env: TestEnv) {
  const res = await env.post(await fixture("minimal.json"));
  return (await res.json()).task_id as string;
}

const types = async (env: TestEnv, taskId: string) =>
  (await env.services.store.timeline(taskId)).map((e) => e.type);
const count = (list: string[], type: string) => list.filter((t) => t === type).length;

Deno.test("a worker killed mid-task: another reclaims the task and completes it exactly once", async () => {
  await using env = await testEnv("sigkill", { CLAIM_IDLE_MS: "300" });
  const child = spawnWorker(env, { OFFLINE_LATENCY_MS: "1500", CLAIM_IDLE_MS: "300" });
  const taskId = await submit(env);
  await waitFor(async () => (await types(env, taskId)).includes("step.started"), {
    timeoutMs: 20_000,
    what: "the child to start the task",
  });
  child.kill("SIGKILL");
  const status = await child.status;
  assert.equal(status.signal, "SIGKILL");
  await child.stderr.cancel();
  assert.ok(!(await types(env, taskId)).includes("task.completed"));

  const survivor = await runConsumers(env);
  try {
    await waitFor(async () => (await types(env, taskId)).includes("task.completed"), {
      what: "the survivor to finish the task",
    });
    const timeline = await types(env, taskId);
    assert.equal(count(timeline, "task.completed"), 1);
    assert.equal(count(timeline, "task.started"), 2);
    const pending = await env.services.redis.xpending(env.services.keys.webhookStream, "workers");
    assert.equal(pending[0], 0);
  } finally {
    await survivor.stop(1_000);
  }
});

Deno.test("a long task keeps its claim fresh, so a second worker never runs it too", async () => {
  // Each step outlasts CLAIM_IDLE_MS, so without the heartbeat the second worker would reclaim the
  // task; the margins (heartbeat every 333 ms, idle after 1 s) survive a busy CI machine.
  await using env = await testEnv("heartbeat", { CLAIM_IDLE_MS: "1000" });
  const slow = bindPipeline({ ...env.config, OFFLINE_LATENCY_MS: 1_200 }, "offline", {
    videos: {
      latest: () => Promise.resolve(null),
      claimRevision: (_, n) => Promise.resolve(n + 1),
    },
  });
  const a = await runConsumers(env, { pipeline: slow });
  const b = await runConsumers(env, { pipeline: slow });
  try {
    const taskId = await submit(env);
    await waitFor(async () => (await types(env, taskId)).includes("task.completed"), {
      what: "the task to complete",
    });
    const timeline = await types(env, taskId);
    assert.equal(count(timeline, "task.started"), 1, timeline.join(", "));
    assert.equal(count(timeline, "step.started"), 3, "reframe, scenes, persist");
  } finally {
    await Promise.all([a.stop(1_000), b.stop(1_000)]);
  }
});

Deno.test("a worker started with CONSUMERS=projections runs only the projections", async () => {
  await using env = await testEnv("consumers-split");
  const child = spawnWorker(env, { CONSUMERS: "projections", LOG_LEVEL: "info" });
  const { redis, keys } = env.services;
  const taskId = await submit(env);
  let passed = false;
  try {
    await waitFor(async () => await redis.exists(taskViewKey(keys.views(0).prefix, taskId)), {
      timeoutMs: 20_000,
      what: "the projector process to project the queued task",
    });
    const groups = async (stream: string) =>
      (await groupInfo(redis, stream)).map((g) => g.name).sort();
    // Every process creates every group (so none misses events), but runs only its own consumers.
    const all = "callbacks,scene-sink,stats,task-index,task-view,video-scenes";
    await waitFor(async () => (await groups(keys.eventStream)).join() === all, {
      what: `the event stream's groups to be ${all}`,
    });
    assert.deepEqual(await groups(keys.webhookStream), ["workers"]);
    const [workers] = await groupInfo(redis, keys.webhookStream);
    assert.equal(workers.consumers, 0, "no task worker");
    const view = await (await env.services.app.request(`/task/${taskId}`)).json();
    assert.equal(view.status, "queued");
    passed = true;
  } finally {
    child.kill("SIGTERM");
    const status = await child.status;
    const log = await new Response(child.stderr).text();
    // Only when the checks above passed (otherwise their error is the one to see).
    if (passed) {
      assert.equal(status.code, 0, log);
      assert.match(log, /"msg":"Consumers started".*"consumers":\["projections"\]/);
    }
  }
});

Deno.test("SIGTERM finishes the in-flight task, acks it and exits 0", async () => {
  await using env = await testEnv("sigterm");
  const child = spawnWorker(env, {
    OFFLINE_LATENCY_MS: "300",
    SHUTDOWN_TIMEOUT_MS: "10000",
    LOG_LEVEL: "info",
  });
  const taskId = await submit(env);
  await waitFor(async () => (await types(env, taskId)).includes("step.started"), {
    timeoutMs: 20_000,
  });
  child.kill("SIGTERM");
  const status = await child.status;
  const log = await new Response(child.stderr).text();
  assert.equal(status.code, 0, log);
  assert.ok((await types(env, taskId)).includes("scenes.generated"));
  const pending = await env.services.redis.xpending(env.services.keys.webhookStream, "workers");
  assert.equal(pending[0], 0);
  assert.match(log, /"msg":"Consumers stopped".*"finished":[1-9].*"abandoned":0/);
});
