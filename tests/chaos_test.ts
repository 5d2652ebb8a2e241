import assert from "node:assert/strict";
import { spawnRedis } from "../src/dev/local_services.ts";
import type { RedisClient } from "../src/redis/client.ts";
import {
  caughtUp,
  fixture,
  freePort,
  readStream,
  spawnMain,
  testEnv,
  waitFor,
} from "./_helpers.ts";
import { createTestSchema } from "./fakes/postgres.ts";
import { startPostgrest } from "./fakes/postgrest_server.ts";

// tests/crash_test.ts covers one worker killed mid-task with nothing else running, and
// tests/redis_down_test.ts a Redis without AOF going away under the HTTP layer alone. This is
// both at once under load: worker processes, the Supabase sink and a Redis restarted from its AOF.

const SERVICE_KEY = `sb_secret_${crypto.randomUUID()}`;

/** A private redis-server with AOF synced on every write, as durable as Redis gets. */
const startDurableRedis = (port: number, dir: string) =>
  spawnRedis({ port, dir, appendfsync: "always" });

function kill(child: Deno.ChildProcess) {
  try {
    child.kill("SIGKILL");
  } catch {
    // Already gone.
  }
}

/** Entries of the group pending per consumer name. */
async function pendingByConsumer(redis: RedisClient, stream: string, group: string) {
  const [, , , consumers] = await redis.xpending(stream, group) as [
    number,
    string | null,
    string | null,
    [string, string][] | null,
  ];
  return new Map((consumers ?? []).map(([name, count]) => [name, Number(count)]));
}

Deno.test("chaos: kill -9 of a worker mid-load and a Redis restart from its AOF lose and duplicate nothing", async () => {
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "vp-chaos-" });
  let redis = await startDurableRedis(port, dir);
  const db = await createTestSchema();
  const postgrest = await startPostgrest({
    pool: db.pool,
    schemas: [db.schema],
    serviceRoleKey: SERVICE_KEY,
    anonKey: "anon",
  });
  const workers: ReturnType<typeof spawnMain>[] = [];
  let closeEnv = () => Promise.resolve();
  let loading = true;
  let load = Promise.resolve();
  try {
    const settings = {
      REDIS_URL: `redis://127.0.0.1:${port}`,
      SUPABASE_URL: postgrest.url,
      SUPABASE_SERVICE_ROLE_KEY: SERVICE_KEY,
      SUPABASE_SCHEMA: db.schema,
      PROVIDER_MODE: "offline",
      OFFLINE_LATENCY_MS: "200",
      CLAIM_IDLE_MS: "500",
      RETRY_BASE_MS: "20",
      RATE_LIMIT_PER_MINUTE: "0",
    };
    // Closed, not disposed: its keys go with the private server.
    const env = await testEnv("chaos", settings);
    closeEnv = () => env.services.close();
    const { keys } = env.services;
    const workerEnv = {
      ...settings,
      KEY_PREFIX: env.prefix,
      LOG_LEVEL: Deno.env.get("TEST_LOG") ? "info" : "error",
    };
    workers.push(spawnMain("worker", workerEnv), spawnMain("worker", workerEnv));
    const [victim] = workers;

    // The load: one webhook every 15 ms, each for a video of its own, until told to stop.
    const base = JSON.parse(await fixture("minimal.json"));
    const acked = new Map<string, string>(); // task id → video id
    const statuses = new Map<number, number>();
    load = (async () => {
      for (let i = 0; loading; i++) {
        const res = await env.post({ ...base, video_id: `chaos-${i}` });
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status === 202) acked.set((await res.json()).task_id, `chaos-${i}`);
        else await res.body?.cancel();
        await new Promise((resolve) => setTimeout(resolve, 15));
      }
    })();
    const ackedAtLeast = (n: number, what: string) =>
      waitFor(() => acked.size >= n, { timeoutMs: 10_000, what });

    // kill -9 of a worker holding tasks in flight, once both hold some (both have started).
    const [victimPid, survivorPid] = workers.map((w) => w.process.pid);
    const held = await waitFor(async () => {
      const pending = await pendingByConsumer(env.services.redis, keys.webhookStream, "workers")
        .catch(() => new Map<string, number>()); // no group before the first worker starts
      const of = (pid: number) => [...pending].find(([name]) => name.includes(`-${pid}-`))?.[1];
      return acked.size >= 15 && of(survivorPid) ? of(victimPid) ?? 0 : 0;
    }, { timeoutMs: 20_000, what: "both workers to hold tasks" });
    victim.process.kill("SIGKILL");
    assert.equal((await victim.process.status).signal, "SIGKILL");

    // Redis killed and restarted from its AOF while webhooks keep coming.
    await ackedAtLeast(acked.size + 15, "webhooks after the worker was killed");
    kill(redis);
    await redis.status;
    await new Promise((resolve) => setTimeout(resolve, 300));
    redis = await startDurableRedis(port, dir);
    await ackedAtLeast(acked.size + 15, "webhooks after Redis was back");
    loading = false;
    await load;

    // Every stored task completes; the survivor takes over the killed worker's entries.
    const { redis: client } = env.services;
    const events = async () => await readStream(client, keys.eventStream);
    await waitFor(async () => {
      const all = await events();
      const queued = new Set(all.filter((e) => e.type === "task.queued").map((e) => e.task_id));
      const done = new Set(all.filter((e) => e.type === "task.completed").map((e) => e.task_id));
      return [...queued].every((id) => done.has(id)) &&
        await caughtUp(client, [keys.webhookStream, keys.eventStream], ["workers", "scene-sink"]);
    }, { timeoutMs: 20_000, intervalMs: 100, what: "every stored task to complete" });

    const all = await events();
    const completed = all.filter((e) => e.type === "task.completed");
    const perTask = new Map<string, number>();
    for (const e of completed) perTask.set(e.task_id, (perTask.get(e.task_id) ?? 0) + 1);
    const queued = all.filter((e) => e.type === "task.queued").map((e) => e.task_id);
    const started = new Map<string, number>();
    for (const e of all.filter((e) => e.type === "task.started")) {
      started.set(e.task_id, (started.get(e.task_id) ?? 0) + 1);
    }
    const rerun = [...started.values()].filter((n) => n > 1).length;
    const summary = `acked ${acked.size}, stored ${queued.length}, statuses ${[
      ...statuses,
    ]}, held by the killed worker ${held}, started again ${rerun}`;
    if (Deno.env.get("TEST_LOG")) console.error(summary);
    assert.ok(rerun > 0, `the killed worker's tasks were taken over: ${summary}`);
    assert.ok(held > 0 && (statuses.get(503) ?? 0) > 0, `the faults were felt: ${summary}`);
    assert.deepEqual([...statuses.keys()].sort(), [202, 503], summary);
    for (const taskId of acked.keys()) assert.ok(queued.includes(taskId), `${taskId} stored`);
    for (const taskId of queued) {
      assert.equal(perTask.get(taskId), 1, `${taskId}: one task.completed (${summary})`);
    }
    assert.equal(all.filter((e) => e.type === "task.dead_lettered").length, 0);
    assert.equal(await client.xlen(keys.deadLetterStream), 0);

    // One revision per video in the scene store, the rows of exactly one task, all of its scenes.
    type Stored = {
      video_id: string;
      n: number;
      revision: number;
      revisions: number;
      tasks: number;
    };
    const rows = (await db.pool.query(
      `select video_id, count(*)::int as n, max(revision) as revision,
              count(distinct revision)::int as revisions, count(distinct task_id)::int as tasks
       from scenes group by video_id`,
    )).rows as Stored[];
    const stored = new Map(rows.map((r) => [r.video_id, r]));
    for (const e of completed) {
      const { video_id, result } = JSON.parse(e.data);
      const row = stored.get(video_id);
      assert.ok(row, `${video_id} has scene rows`);
      assert.deepEqual(
        { n: row.n, revision: row.revision, revisions: row.revisions, tasks: row.tasks },
        { n: result.scenes.length, revision: 1, revisions: 1, tasks: 1 },
        video_id,
      );
      assert.equal(result.video_revision, 1, video_id);
    }
    assert.equal(stored.size, completed.length, "no rows for a task that did not complete");
  } finally {
    loading = false;
    await load.catch(() => {});
    for (const { process } of workers) kill(process);
    for (const { process, log } of workers) {
      await process.status;
      const text = await log;
      if (Deno.env.get("TEST_LOG") && text) console.error(`worker ${process.pid}:\n${text}`);
    }
    await closeEnv();
    kill(redis);
    await redis.status;
    await postgrest.close();
    await db.close();
    await Deno.remove(dir, { recursive: true });
  }
});
