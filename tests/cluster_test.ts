/**
 * The service on a local Redis Cluster (3 masters, 3 replicas), started once for this file and
 * shared by its tests.
 */
import assert from "node:assert/strict";
import { Cluster } from "ioredis";
import { loadConfig } from "../src/config.ts";
import { readTaskView } from "../src/projections/task_view/projection.ts";
import {
  aofEnabled,
  callWithKey,
  closeRedis,
  connectRedis,
  redisTarget,
  scanKeys,
  waitReady,
} from "../src/redis/client.ts";
import { deleteMatching } from "../src/projections/rebuild.ts";
import {
  fixture,
  freePort,
  readStream,
  runConsumers,
  spawnMain,
  testEnv,
  waitFor,
} from "./_helpers.ts";
import { partitionBehaviour, partitionedEnv } from "./support/partition_behaviour.ts";
import { LocalCluster, shared, topologyTest } from "./support/redis_cluster.ts";

const topology = shared(() => LocalCluster.start());
const cluster = topology.get;

Deno.test("config: REDIS_CLUSTER_NODES and REDIS_SENTINELS are host:port lists, one of them", () => {
  const config = loadConfig({ REDIS_CLUSTER_NODES: "127.0.0.1:7000, redis-2:7001,[::1]:7002" });
  assert.deepEqual(redisTarget(config), {
    url: "redis://127.0.0.1:6379",
    cluster: [
      { host: "127.0.0.1", port: 7000 },
      { host: "redis-2", port: 7001 },
      { host: "::1", port: 7002 },
    ],
  });
  assert.throws(
    () => loadConfig({ REDIS_CLUSTER_NODES: "127.0.0.1" }),
    /"127.0.0.1" is not host:port/,
  );
  assert.throws(() => loadConfig({ REDIS_CLUSTER_NODES: "a:70000" }), /"a:70000" is not host:port/);
  assert.throws(
    () => loadConfig({ REDIS_SENTINELS: "s:26379" }),
    /REDIS_SENTINEL_NAME: is required/,
  );
  assert.throws(
    () =>
      loadConfig({
        REDIS_SENTINELS: "s:26379",
        REDIS_SENTINEL_NAME: "m",
        REDIS_CLUSTER_NODES: "c:1",
      }),
    /REDIS_SENTINELS: cannot be used with REDIS_CLUSTER_NODES/,
  );
  const sentinel = loadConfig({
    REDIS_SENTINELS: "s1:26379,s2:26379",
    REDIS_SENTINEL_NAME: "vp",
    REDIS_URL: "rediss://:secret@ignored:6379",
  });
  assert.deepEqual(redisTarget(sentinel), {
    url: "rediss://:secret@ignored:6379",
    sentinels: [{ host: "s1", port: 26379 }, { host: "s2", port: 26379 }],
    name: "vp",
  });
  assert.equal(redisTarget(loadConfig({})), "redis://127.0.0.1:6379");
});

topologyTest(
  "cluster client: keyless commands reach the key's node, SCAN and INFO every master",
  async () => {
    const local = await cluster();
    const redis = connectRedis({ cluster: [{ host: "127.0.0.1", port: local.servers[0].port }] }, {
      commandTimeoutMs: 1_000,
      name: "test",
    });
    try {
      await waitReady(redis);
      assert.ok(redis instanceof Cluster);
      // Keys on every master: without a hash tag they spread over the slots.
      const keys = Array.from({ length: 30 }, (_, i) => `scan-test:${i}`);
      await Promise.all(keys.map((key) => redis.xadd(key, "*", "n", "1")));
      const sizes = await Promise.all(redis.nodes("master").map((node) => node.dbsize()));
      assert.equal(sizes.length, 3);
      assert.ok(sizes.every((n) => n > 0), `the keys lie on all three masters: ${sizes}`);
      const found: string[] = [];
      for await (const batch of scanKeys(redis, "scan-test:*")) found.push(...batch);
      assert.deepEqual(found.sort(), keys.toSorted());
      // XINFO names its key after a subcommand: sent to a random node it would answer MOVED.
      for (const key of keys.slice(0, 6)) {
        const info = await callWithKey(redis, key, "XINFO", "STREAM", key) as unknown[];
        assert.equal(info[info.indexOf("length") + 1], 1);
      }
      assert.equal(await aofEnabled(redis), true);
      assert.equal(await deleteMatching(redis, "scan-test:*"), keys.length);
      assert.equal(await redis.exists(...keys.slice(0, 1)), 0);
    } finally {
      await closeRedis(redis);
    }
  },
);

topologyTest(
  "cluster: a webhook becomes a completed task, in-process, with PARTITIONS=1",
  async () => {
    const local = await cluster();
    await using env = await testEnv("cluster-e2e", { ...local.env, PROVIDER_MODE: "offline" });
    assert.ok(env.services.redis instanceof Cluster);
    const consumers = await runConsumers(env);
    try {
      const body = JSON.parse(await fixture("minimal.json"));
      const res = await env.post({ ...body, idempotency_key: "cluster-1" });
      assert.equal(res.status, 202);
      const { task_id } = await res.json();
      const again = await (await env.post({ ...body, idempotency_key: "cluster-1" })).json();
      assert.deepEqual([again.task_id, again.duplicate], [task_id, true]);
      const view = await waitFor(async () => {
        const v = await readTaskView(env.services.redis, env.services.keys, task_id);
        return v?.status === "completed" ? v : null;
      }, { what: "the task completed on the cluster" });
      assert.equal(view.attempts, 1);
    } finally {
      await consumers.stop(1_000);
    }
  },
);

topologyTest(
  "cluster: server and worker processes turn a webhook into a completed task",
  async () => {
    const local = await cluster();
    const port = freePort();
    const prefix = `cluster-procs-${crypto.randomUUID().slice(0, 8)}`;
    const settings = {
      ...local.env,
      KEY_PREFIX: prefix,
      PROVIDER_MODE: "offline",
      LOG_LEVEL: Deno.env.get("TEST_LOG") ? "info" : "error",
    };
    const server = spawnMain("serve", { ...settings, PORT: String(port), HOST: "127.0.0.1" });
    const worker = spawnMain("worker", settings);
    try {
      const base = `http://127.0.0.1:${port}`;
      await waitFor(
        () =>
          fetch(`${base}/health`).then(async (r) => (await r.body?.cancel(), r.ok), () => false),
        { timeoutMs: 30_000, what: "the server's /health" },
      );
      const health = await (await fetch(`${base}/health`)).json();
      assert.equal(health.redis.aof, true, "every master runs with AOF");
      const res = await fetch(`${base}/webhook`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: await fixture("minimal.json"),
      });
      assert.equal(res.status, 202);
      const { task_id } = await res.json();
      const task = await waitFor(async () => {
        const r = await fetch(`${base}/task/${task_id}`);
        const body = r.ok ? await r.json() : (await r.body?.cancel(), null);
        return body?.status === "completed" ? body : null;
      }, { timeoutMs: 20_000, what: "the task completed" });
      assert.equal(task.task_id, task_id);
      // The log is on the cluster, on the master of the prefix's slot.
      const config = loadConfig({ ...local.env, KEY_PREFIX: prefix });
      const redis = connectRedis(redisTarget(config));
      try {
        const events = await redis.xrange(`{${prefix}}:stream:events`, "-", "+");
        assert.ok(events.some(([, f]) => f.includes("task.completed")));
        await deleteMatching(redis, `{${prefix}}:*`);
      } finally {
        await closeRedis(redis);
      }
    } finally {
      for (const child of [server, worker]) child.process.kill("SIGTERM");
      for (const child of [server, worker]) {
        const status = await child.process.status;
        const log = await child.log;
        if (Deno.env.get("TEST_LOG") || !status.success) console.error(log);
      }
    }
  },
);

Deno.test({
  name: "cluster: the core behaviour with PARTITIONS=6",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const local = await cluster();
    await partitionBehaviour(t, { partitions: 6, env: local.env });
  },
});

topologyTest(
  "cluster: a worker process killed mid-task on PARTITIONS=6: its tasks complete once elsewhere",
  async () => {
    const local = await cluster();
    const settings = {
      ...local.env,
      PARTITIONS: "6",
      PROVIDER_MODE: "offline",
      CLAIM_IDLE_MS: "500",
    };
    await using env = await partitionedEnv("cluster-crash", { partitions: 6, env: settings });
    const { partitions, redis } = env.services;
    const worker = {
      ...settings,
      KEY_PREFIX: env.prefix,
      OFFLINE_LATENCY_MS: "1500",
      LOG_LEVEL: "error",
    };
    const victim = spawnMain("worker", { ...worker, CONSUMERS: "tasks,scenes" });
    let survivor: ReturnType<typeof spawnMain> | null = null;
    try {
      const base = JSON.parse(await fixture("minimal.json"));
      const ids: string[] = [];
      for (let i = 0; i < 12; i++) {
        const res = await env.post({ ...base, video_id: `crash-${i}` });
        assert.equal(res.status, 202);
        ids.push((await res.json()).task_id);
      }
      const held = () =>
        Promise.all(partitions.list.map((p) => redis.xpending(p.keys.webhookStream, "workers")))
          .then((all) => all.reduce((n, [count]) => n + Number(count), 0), () => 0);
      await waitFor(async () => (await held()) >= 6, {
        timeoutMs: 30_000,
        what: "the victim to hold tasks in several partitions",
      });
      victim.process.kill("SIGKILL");
      assert.equal((await victim.process.status).signal, "SIGKILL");
      survivor = spawnMain("worker", worker);
      const events = async () =>
        (await Promise.all(partitions.list.map((p) => readStream(redis, p.keys.eventStream))))
          .flat();
      await waitFor(async () => {
        const done = new Set(
          (await events()).filter((e) => e.type === "task.completed").map((e) => e.task_id),
        );
        return ids.every((id) => done.has(id));
      }, { timeoutMs: 30_000, intervalMs: 100, what: "every task completed by the survivor" });
      const all = await events();
      for (const id of ids) {
        assert.equal(
          all.filter((e) => e.type === "task.completed" && e.task_id === id).length,
          1,
          id,
        );
      }
      const restarted = ids.filter((id) =>
        all.filter((e) => e.type === "task.started" && e.task_id === id).length > 1
      );
      assert.ok(restarted.length > 0, "the killed worker's tasks were taken over");
    } finally {
      for (const child of [victim, survivor]) {
        if (!child) continue;
        try {
          child.process.kill("SIGKILL");
        } catch {
          // Gone.
        }
        await child.process.status;
        await child.log;
      }
    }
  },
);

topologyTest("cluster: GET /tasks lists and searches every partition (PARTITIONS=6)", async () => {
  const local = await cluster();
  await using env = await partitionedEnv("cluster-tasks", { partitions: 6, env: local.env });
  const running = await runConsumers(env);
  try {
    const base = JSON.parse(await fixture("minimal.json"));
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      const res = await env.post({ ...base, video_id: `list-${i}`, prompt: `harbor sunrise ${i}` });
      assert.equal(res.status, 202);
      ids.push((await res.json()).task_id);
    }
    const used = new Set(ids.map((id) => env.services.partitions.ofTask(id)!.index));
    assert.ok(used.size >= 3, `12 videos in ${used.size} partitions`);
    const list = async (query: string) => {
      const res = await env.services.app.request(`/tasks?${query}`);
      assert.equal(res.status, 200, await res.clone().text());
      return await res.json();
    };
    const all = await waitFor(async () => {
      const page = await list("limit=100&status=completed");
      return page.items.length === 12 ? page : null;
    }, { timeoutMs: 20_000, what: "12 completed tasks listed" });
    assert.deepEqual(new Set(all.items.map((t: { task_id: string }) => t.task_id)), new Set(ids));
    const byVideo = await list("q=list-7");
    assert.deepEqual(byVideo.items.map((t: { task_id: string }) => t.task_id), [ids[7]]);
    const byId = await list(`q=${ids[3]}`);
    assert.deepEqual(byId.items.map((t: { task_id: string }) => t.task_id), [ids[3]]);
    const byPrompt = await list("q=harbor%20sunrise&limit=100");
    assert.equal(byPrompt.items.length, 12);
  } finally {
    await running.stop(2_000);
  }
});

topologyTest("cluster: stop the shared cluster", () => topology.stop());
