import assert from "node:assert/strict";
import { spawnRedis } from "../src/dev/local_services.ts";
import { registryKey, reportRunning } from "../src/consumer_registry.ts";
import { EXPIRED } from "../src/decisions/callback.ts";
import { compareIds } from "../src/events.ts";
import { createKeys } from "../src/keys.ts";
import { taskViewKey } from "../src/projections/task_view/view.ts";
import { closeRedis, connectRedis } from "../src/redis/client.ts";
import {
  fixture,
  freePort,
  readStream,
  runConsumers,
  spawnMain as spawn,
  testEnv,
  uniquePrefix,
  waitFor,
} from "./_helpers.ts";

// Redis losing its data (restarted without AOF, FLUSHALL, a fresh replica promoted) under running
// processes, and consumer groups that no process runs. Each test with Redis data loss uses a
// private redis-server: the shared one is never flushed.

/** A private redis-server without persistence on a free port; the shared one is never touched. */
const startRedis = (port: number) => spawnRedis({ port });

async function stop(child: ReturnType<typeof spawn>) {
  try {
    child.process.kill("SIGTERM");
  } catch {
    // Gone already.
  }
  await child.process.status;
  return await child.log;
}

async function health(base: string) {
  const res = await fetch(`${base}/health`);
  return { status: res.status, body: await res.json() };
}

/** POSTs the minimal webhook; resolves with the task id. */
async function submit(base: string, extra: Record<string, unknown> = {}) {
  const body = { ...JSON.parse(await fixture("minimal.json")), ...extra };
  const res = await fetch(`${base}/webhook`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 202);
  return (await res.json()).task_id as string;
}

async function statusOf(base: string, taskId: string) {
  const res = await fetch(`${base}/task/${taskId}`);
  if (res.status !== 200) {
    await res.body?.cancel();
    return null;
  }
  return (await res.json()).status as string;
}

/**
 * Redis loses everything under running processes (`dev`, or `serve` + `worker`): /health says
 * 503 naming the missing groups while they cannot be recreated (the ACL denies XGROUP for that
 * while, so the window can be seen), then the consumers recreate them without a restart, /health
 * says 200, and a new webhook completes within 5 s, its task view written by the projections.
 */
async function flushUnder(commands: string[]) {
  const port = freePort();
  const redisProcess = await startRedis(port);
  const prefix = uniquePrefix("heal");
  const httpPort = freePort();
  const base = `http://127.0.0.1:${httpPort}`;
  const env = {
    REDIS_URL: `redis://127.0.0.1:${port}`,
    KEY_PREFIX: prefix,
    PORT: String(httpPort),
    HOST: "127.0.0.1",
    PROVIDER_MODE: "offline",
    RATE_LIMIT_PER_MINUTE: "0",
    CLAIM_IDLE_MS: "1000",
    LOG_LEVEL: Deno.env.get("TEST_LOG") ? "info" : "error",
    LOG_FORMAT: "json",
  };
  const redis = connectRedis(env.REDIS_URL);
  const children = commands.map((command) => spawn(command, env));
  try {
    await waitFor(async () => (await health(base).catch(() => null))?.status === 200, {
      timeoutMs: 20_000,
      intervalMs: 100,
      what: "the service to answer /health",
    });
    // Every kind reports running, and the server has seen the reports.
    await waitFor(async () => await redis.hlen(registryKey(createKeys(prefix))) === 4, {
      what: "every consumer kind to report",
    });
    const first = await submit(base);
    await waitFor(async () => await statusOf(base, first) === "completed", {
      what: "a task before the flush",
    });
    assert.equal((await health(base)).status, 200);

    // Redis loses its data; for a while, nobody may create consumer groups.
    await redis.multi().flushall().call("ACL", "SETUSER", "default", "-xgroup").exec();
    const down = await waitFor(async () => {
      const answer = await health(base);
      return answer.status === 503 ? answer : null;
    }, { timeoutMs: 5_000, what: "/health to say 503" });
    assert.equal(down.body.status, "degraded");
    const reasons = down.body.problems.join("\n");
    for (const group of ["workers", "scene-sink", "callbacks", "task-view"]) {
      assert.match(reasons, new RegExp(`"${group}" \\(\\w+\\) is missing`), reasons);
    }

    await redis.call("ACL", "SETUSER", "default", "+xgroup");
    const t0 = Date.now();
    const second = await submit(base);
    await waitFor(async () => await statusOf(base, second) === "completed", {
      timeoutMs: 5_000,
      what: "a new webhook to complete after the flush",
    });
    // Completed in the projected view (not only folded from the timeline on read).
    await waitFor(async () => {
      const view = await redis.get(taskViewKey(`{${prefix}}:view`, second));
      return view && JSON.parse(view).status === "completed";
    }, { timeoutMs: Math.max(100, 5_000 - (Date.now() - t0)), what: "the task view" });
    await waitFor(async () => (await health(base)).status === 200, {
      timeoutMs: 5_000,
      what: "/health to say 200 again",
    });
    const after = await health(base);
    assert.deepEqual(after.body.problems, []);
    // The old task went with the data: its id is unknown now.
    assert.equal(await statusOf(base, first), null);
  } finally {
    const logs = await Promise.all(children.map(stop));
    if (Deno.env.get("TEST_LOG")) console.error(logs.join("\n"));
    await closeRedis(redis);
    redisProcess.kill("SIGKILL");
    await redisProcess.status;
  }
}

Deno.test("FLUSHALL under `dev`: 503 while groups are missing, then recovery without a restart", async () => {
  await flushUnder(["dev"]);
});

Deno.test("FLUSHALL under `serve` + `worker`: 503 while groups are missing, then recovery without a restart", async () => {
  await flushUnder(["serve", "worker"]);
});

Deno.test("a projection whose log was deleted under its views drops them and folds the new log", async () => {
  await using env = await testEnv("reset-log");
  const { redis, keys } = env.services;
  const consumers = await runConsumers(env, { run: ["tasks", "scenes", "projections"] });
  try {
    const views = `{${env.prefix}}:view`;
    const post = async () => (await (await env.post(await fixture("minimal.json"))).json()).task_id;
    const completed = (taskId: string) =>
      waitFor(async () => {
        const view = await redis.get(taskViewKey(views, taskId));
        return view && JSON.parse(view).status === "completed";
      }, { what: `${taskId} completed in its view` });
    const old = await post();
    await completed(old);
    // The log goes (with its groups); checkpoints and views stay.
    await redis.del(keys.eventStream, keys.webhookStream);
    const fresh = await post();
    await completed(fresh);
    assert.equal(await redis.get(taskViewKey(views, old)), null, "the old view was dropped");
    const checkpoint = await redis.get(keys.checkpoint("task-view"));
    const [first] = await redis.xrange(keys.eventStream, "-", "+", "COUNT", 1);
    assert.ok(checkpoint && first, "a checkpoint and a new log");
    assert.ok(compareIds(checkpoint, first[0]) >= 0, "the checkpoint is within the new log");
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("a callback sender started late expires stale outcomes instead of sending them", async () => {
  const received: string[] = [];
  const receiver = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, (req) => {
    received.push(req.headers.get("webhook-id") ?? "");
    return new Response("ok");
  });
  await using env = await testEnv("late-callbacks", {
    CALLBACK_MAX_AGE_S: "1",
    ALLOW_PRIVATE_CALLBACKS: "true",
  });
  const { redis, keys } = env.services;
  const callbackUrl = `http://localhost:${receiver.addr.port}/hook`;
  const body = { ...JSON.parse(await fixture("minimal.json")), callback_url: callbackUrl };
  // A deployment without callbacks: the group exists (every process creates every group).
  const workers = await runConsumers(env, { run: ["tasks", "scenes"] });
  let late = null;
  try {
    const stale: string[] = [];
    for (let i = 0; i < 3; i++) stale.push((await (await env.post(body)).json()).task_id);
    const outcomes = async () =>
      (await readStream(redis, keys.eventStream)).filter((e) => e.type === "task.completed");
    await waitFor(async () => (await outcomes()).length === 3, { what: "three outcomes" });
    await new Promise((resolve) => setTimeout(resolve, 1_100));

    late = await runConsumers(env, { run: ["callbacks"] });
    const failed = async () =>
      (await readStream(redis, keys.eventStream)).filter((e) => e.type === "callback.failed");
    await waitFor(async () => (await failed()).length === 3, { what: "three expired callbacks" });
    for (const e of await failed()) {
      const data = JSON.parse(e.data);
      assert.equal(data.error, EXPIRED);
      assert.equal(data.attempts, 0);
      assert.ok(stale.includes(e.task_id));
    }
    const view = await (await env.services.app.request(`/task/${stale[0]}`)).json();
    assert.equal(view.callback.state, "failed");
    assert.equal(view.callback.last_error, EXPIRED);
    // A fresh outcome is still delivered.
    await env.post(body);
    await waitFor(() => received.length === 1, { what: "the fresh callback" });
    assert.equal(received.length, 1, "no stale outcome was sent");
  } finally {
    await late?.stop(1_000);
    await workers.stop(1_000);
    await receiver.shutdown();
  }
});

Deno.test("/health: 503 for a missing group, one without a consumer, or an entry pending too long", async () => {
  await using env = await testEnv("health-groups", {
    HEALTH_MAX_CONSUMERLESS_S: "1",
    HEALTH_MAX_PENDING_AGE_S: "2",
  });
  const { redis, keys, app } = env.services;
  const check = async () => {
    const res = await app.request("/health");
    const body = await res.json();
    return { status: res.status, problems: body.problems.join("\n") };
  };
  // Nothing reports running: nothing is expected (an API alone, or before any worker started).
  assert.deepEqual(await check(), { status: 200, problems: "" });
  const report = () =>
    reportRunning(redis, keys, { tasks: [{ stream: "webhooks", group: "workers" }] }, Date.now());
  await report();
  const missing = await check();
  assert.equal(missing.status, 503);
  assert.match(missing.problems, /"workers" \(tasks\) is missing/);
  await redis.xgroup("CREATE", keys.webhookStream, "workers", "$", "MKSTREAM");
  assert.deepEqual(await check(), { status: 200, problems: "" });
  // An old entry read just now is being worked on: not stuck.
  await redis.xadd(keys.webhookStream, `${Date.now() - 5_000}-0`, "task_id", "t");
  await redis.xreadgroup(
    "GROUP",
    "workers",
    "ghost",
    "COUNT",
    1,
    "STREAMS",
    keys.webhookStream,
    ">",
  );
  assert.equal((await check()).status, 200);
  // Untouched for longer than HEALTH_MAX_PENDING_AGE_S: its consumer is gone.
  await new Promise((resolve) => setTimeout(resolve, 2_200));
  await report();
  const stuck = await check();
  assert.equal(stuck.status, 503);
  assert.match(stuck.problems, /"workers" \(tasks\) has an entry untouched for 2 s/);
  await redis.xack(
    keys.webhookStream,
    "workers",
    (await redis.xrange(keys.webhookStream, "-", "+"))[0][0],
  );
  assert.equal((await check()).status, 200);
  // No report for longer than HEALTH_MAX_CONSUMERLESS_S.
  await new Promise((resolve) => setTimeout(resolve, 1_200));
  const orphaned = await check();
  assert.equal(orphaned.status, 503);
  assert.match(orphaned.problems, /"workers" \(tasks\) has had no consumer for 1 s/);
  await report();
  assert.equal((await check()).status, 200);
  // Liveness never looks at Redis or the consumers.
  const live = await app.request("/health/live");
  assert.equal(live.status, 200);
  assert.deepEqual(await live.json(), { status: "ok" });
});
