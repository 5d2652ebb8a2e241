import assert from "node:assert/strict";
import { freePort, spawnRedis } from "../src/dev/local_services.ts";
import { loadConfig } from "../src/config.ts";
import { requestFingerprint } from "../src/event_store.ts";
import { claimIdempotencyScript } from "../src/redis/scripts.ts";
import { VideoRequestSchema } from "../src/webhook.ts";
import { runCli } from "../src/cli/_common.ts";
import { DLQ_USAGE, dlqMain } from "../src/cli/dlq.ts";
import { REPLAY_USAGE, replayMain } from "../src/cli/replay.ts";
import { createServices } from "../src/runtime.ts";
import { projectionLease } from "../src/projections/registry.ts";
import { readTaskView } from "../src/projections/task_view/projection.ts";
import { closeRedis, connectRedis, waitReady } from "../src/redis/client.ts";
import { childEnv, fixture, runConsumers, testEnv, testLogger, waitFor } from "./_helpers.ts";
import { partitionBehaviour, partitionedEnv } from "./support/partition_behaviour.ts";

Deno.test("partitions on one Redis node, PARTITIONS=6", async (t) => {
  await partitionBehaviour(t, { partitions: 6 });
});

Deno.test("partitions on one Redis node, PARTITIONS=1 (the layout before partitions)", async (t) => {
  await partitionBehaviour(t, { partitions: 1, skip: ["retention trims every partition"] });
});

Deno.test("PARTITIONS=1 keeps the key layout and task ids of before", async () => {
  await using env = await testEnv("layout");
  const res = await env.post({
    ...JSON.parse(await fixture("minimal.json")),
    idempotency_key: "layout-1",
  });
  const { task_id } = await res.json();
  assert.match(task_id, /^[0-9a-f-]{36}$/);
  const { redis } = env.services;
  const p = `{${env.prefix}}`;
  assert.equal(await redis.xlen(`${p}:stream:webhooks`), 1);
  assert.equal(await redis.llen(`${p}:timeline:${task_id}`), 1);
  const user = JSON.parse(await fixture("minimal.json")).user_id as string;
  const stored = await redis.get(`${p}:idem:${user.length}:${user}:layout-1`);
  assert.ok(stored?.startsWith(`${task_id} `), String(stored));
});

Deno.test("an idempotency key stored before fingerprints existed still finds its task", async () => {
  await using env = await testEnv("legacy-idem");
  const body = { ...JSON.parse(await fixture("minimal.json")), idempotency_key: "old-key" };
  const key = env.services.keys.idempotency(body.user_id, "old-key");
  await env.services.redis.set(key, "legacy-task-id", "EX", 60);
  const res = await env.post(body);
  assert.equal(res.status, 202);
  const json = await res.json();
  assert.equal(json.task_id, "legacy-task-id");
  assert.equal(json.duplicate, true);
});

Deno.test("a process started with another PARTITIONS than the prefix holds refuses to start", async () => {
  await using env = await partitionedEnv("refuse", { partitions: 6 });
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", new URL("../main.ts", import.meta.url).pathname, "worker"],
    clearEnv: true,
    env: { ...childEnv(), KEY_PREFIX: env.prefix, PARTITIONS: "3", LOG_FORMAT: "json" },
    stdout: "null",
    stderr: "piped",
  }).output();
  const log = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 1, log);
  assert.match(log, /holds 6 partition\(s\) but PARTITIONS=3/);
  assert.match(log, /start with PARTITIONS=6/);
  assert.equal(await env.services.redis.get(env.services.keys.partitionCount), "6");
});

Deno.test("a prefix holding data from before partitions counts as one partition", async () => {
  await using env = await testEnv("legacy-count");
  await env.post(JSON.parse(await fixture("minimal.json")));
  const config = loadConfig({ KEY_PREFIX: env.prefix, PARTITIONS: "4" });
  const services = createServices(config, testLogger());
  try {
    await waitReady(services.redis);
    await assert.rejects(() => services.partitions.checkCount(), /holds 1 partition\(s\)/);
    await env.services.partitions.checkCount();
  } finally {
    await services.close();
  }
});

/** A private redis-server (and, on demand, a replica of it); both stopped by dispose. */
async function privateRedis() {
  const port = freePort();
  // A replica's full sync writes an RDB file: into a temporary folder, not the working directory.
  const dir = await Deno.makeTempDir({ prefix: "ack-redis-" });
  const children: Deno.ChildProcess[] = [await spawnRedis({ port, args: ["--dir", dir] })];
  return {
    url: `redis://127.0.0.1:${port}`,
    async addReplica() {
      const replica = freePort();
      children.push(
        await spawnRedis({
          port: replica,
          args: ["--dir", dir, "--replicaof", "127.0.0.1", String(port)],
        }),
      );
      const primary = connectRedis(`redis://127.0.0.1:${port}`);
      try {
        await waitFor(async () => /slave0:.*state=online/.test(await primary.info("replication")), {
          what: "the replica online",
        });
      } finally {
        await closeRedis(primary);
      }
    },
    async [Symbol.asyncDispose]() {
      for (const child of children.reverse()) {
        child.kill("SIGKILL");
        await child.status;
      }
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("ACK_REPLICAS: 503 within the timeout without a replica, 202 once one holds the write", async () => {
  await using redis = await privateRedis();
  const config = loadConfig({
    REDIS_URL: redis.url,
    KEY_PREFIX: "ack",
    ACK_REPLICAS: "1",
    ACK_TIMEOUT_MS: "1000",
  });
  const services = createServices(config, testLogger());
  try {
    await waitReady(services.redis);
    for (const connection of services.partitions.ackConnections) await waitReady(connection);
    const body = JSON.stringify({
      ...JSON.parse(await fixture("minimal.json")),
      idempotency_key: "ack-1",
    });
    const post = () =>
      services.app.request("/webhook", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
    const t0 = performance.now();
    const refused = await post();
    const ms = performance.now() - t0;
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get("retry-after"), "1");
    const problem = await refused.json();
    assert.match(problem.detail, /0 of 1 replica/);
    assert.ok(ms >= 950 && ms < 3_000, `answered after the timeout (${Math.round(ms)} ms)`);
    // Nothing lost: the write is on the primary, and the retry finds the same task.
    assert.equal(await services.redis.xlen(services.keys.webhookStream), 1);
    await redis.addReplica();
    // The client retries (after Retry-After); once the replica acknowledged the write, 202.
    const accepted = await waitFor(async () => {
      const res = await post();
      return res.status === 202 ? res : (await res.body?.cancel(), null);
    }, { what: "the retry acknowledged", intervalMs: 200 });
    const json = await accepted.json();
    assert.equal(json.task_id, problem.task_id);
    assert.equal(json.duplicate, true);
    // A new request on a replicated primary is acknowledged within the timeout.
    const fresh = await services.app.request("/webhook", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...JSON.parse(body), idempotency_key: "ack-2" }),
    });
    assert.equal(fresh.status, 202);
    assert.equal(await services.redis.xlen(services.keys.webhookStream), 2);
  } finally {
    await services.close();
  }
});

Deno.test("the CLIs work on one partition with --partition, and refuse one that does not exist", async () => {
  await using env = await partitionedEnv("cli", { partitions: 6 });
  await env.post({ ...JSON.parse(await fixture("minimal.json")), video_id: "cli-video" });
  const partition = env.services.partitions.ofVideo("cli-video").index;
  const run = async (main: typeof dlqMain, usage: string, args: string[], partitions = "6") => {
    let out = "";
    const original = console.error;
    let err = "";
    console.error = (text: string) => (err += text);
    try {
      const code = await runCli(
        usage,
        () =>
          main(args, { KEY_PREFIX: env.prefix, PARTITIONS: partitions }, (t) => (out += t), false),
      );
      return { code, out, err };
    } finally {
      console.error = original;
    }
  };
  const one = await run(replayMain, REPLAY_USAGE, [
    "--projections",
    "--dry-run",
    "--partition",
    String(partition),
  ]);
  assert.equal(one.code, 0, one.err);
  assert.match(one.out, /Would rebuild every view from 1 events/);
  const other = await run(replayMain, REPLAY_USAGE, [
    "--projections",
    "--dry-run",
    "--partition",
    String((partition + 1) % 6),
  ]);
  assert.match(other.out, /from 0 events/);
  const missing = await run(dlqMain, DLQ_USAGE, ["list", "--partition", "6"]);
  assert.equal(missing.code, 2);
  assert.match(missing.err, /No partition 6: partitions are 0 to 5/);
  const mismatch = await run(dlqMain, DLQ_USAGE, ["list"], "2");
  assert.equal(mismatch.code, 1);
  assert.match(mismatch.err, /holds 6 partition\(s\) but PARTITIONS=2/);
});

Deno.test("with several partitions a sender's rate limit still covers every partition", async () => {
  await using env = await partitionedEnv("rate", { partitions: 6 }, { RATE_LIMIT_PER_MINUTE: "3" });
  const base = JSON.parse(await fixture("minimal.json"));
  const statuses = [];
  for (let i = 0; i < 5; i++) {
    const res = await env.post({ ...base, video_id: `rate-${i}` });
    statuses.push(res.status);
    await res.body?.cancel();
  }
  assert.deepEqual(statuses, [202, 202, 202, 429, 429]);
  let stored = 0;
  for (const p of env.services.partitions.list) {
    stored += await env.services.redis.xlen(p.keys.webhookStream);
  }
  assert.equal(stored, 3, "a limited request appends nothing");
});

Deno.test("processes running projections share the partitions' projection leases", async () => {
  await using env = await partitionedEnv("share", { partitions: 6 });
  const { redis, partitions } = env.services;
  const holders = async () => {
    const owners: string[] = [];
    for (const p of partitions.list) {
      const owner = await redis.get(projectionLease(p.keys, 0));
      if (owner) owners.push(owner);
    }
    return owners;
  };
  const count = (owners: string[], owner: string) => owners.filter((o) => o === owner).length;
  const total = partitions.count;
  const first = await runConsumers(env, { run: ["projections"] });
  let second: Awaited<ReturnType<typeof runConsumers>> | null = null;
  try {
    await waitFor(async () => count(await holders(), first.consumer) === total, {
      what: "the first process to take every lease",
    });
    second = await runConsumers(env, { run: ["projections"] });
    const split = await waitFor(async () => {
      const owners = await holders();
      const [a, b] = [count(owners, first.consumer), count(owners, second!.consumer)];
      return a === total / 2 && b === total / 2 ? owners : null;
    }, { what: "the leases split evenly", timeoutMs: 30_000 });
    assert.equal(split.length, total);
    // Work is projected by both: every task's view arrives.
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      const res = await env.post({
        ...JSON.parse(await fixture("minimal.json")),
        video_id: `s${i}`,
      });
      ids.push((await res.json()).task_id);
    }
    await waitFor(async () => {
      for (const id of ids) {
        const view = await readTaskView(redis, partitions.ofTask(id)!.keys, id);
        if (!view) return false;
      }
      return true;
    }, { what: "every task projected" });
    // One process stops: the other takes its leases over.
    await second.stop(1_000);
    second = null;
    await waitFor(async () => count(await holders(), first.consumer) === total, {
      what: "the remaining process to take every lease",
      timeoutMs: 30_000,
    });
  } finally {
    await second?.stop(1_000);
    await first.stop(1_000);
  }
});

Deno.test("with several partitions GET /tasks and the dashboard see every partition", async () => {
  const admin = "partition-dashboard-admin-token";
  await using env = await partitionedEnv("dash", { partitions: 6 }, { ADMIN_TOKEN: admin });
  const running = await runConsumers(env, { run: ["projections"] });
  try {
    const ids: string[] = [];
    for (let i = 0; i < 8; i++) {
      const res = await env.post({
        ...JSON.parse(await fixture("minimal.json")),
        video_id: `d${i}`,
      });
      ids.push((await res.json()).task_id);
      // Distinct creation times, so "newest first" has one answer.
      await new Promise((resolve) => setTimeout(resolve, 3));
    }
    const used = new Set(ids.map((id) => env.services.partitions.ofTask(id)!.index));
    assert.ok(used.size > 1, "the tasks span partitions");
    await waitFor(async () => {
      const res = await env.services.app.request("/tasks?limit=20");
      return res.status === 200 && (await res.json()).items.length === ids.length;
    }, { what: "the task index of every partition" });
    const list = await (await env.services.app.request("/tasks?limit=5")).json();
    // Newest first over all partitions, and the next page goes on where this one stopped.
    assert.deepEqual(list.items.map((t: { task_id: string }) => t.task_id), ids.slice(3).reverse());
    const rest = await (await env.services.app.request(
      `/tasks?limit=5&cursor=${encodeURIComponent(list.next_cursor)}`,
    )).json();
    assert.deepEqual(
      rest.items.map((t: { task_id: string }) => t.task_id),
      ids.slice(0, 3).reverse(),
    );
    // The dashboard, signed in as admin: every page answers, a task's page finds its partition.
    const signIn = await env.services.app.request("http://localhost/dashboard/sign-in", {
      method: "POST",
      body: new URLSearchParams({ token: admin }),
    });
    const cookie = (signIn.headers.get("set-cookie") ?? "").split(";")[0];
    await signIn.body?.cancel();
    for (
      const path of [
        "/dashboard",
        "/dashboard/tasks",
        "/dashboard/dead-letters",
        "/dashboard/replay",
      ]
    ) {
      const res = await env.services.app.request(path, { headers: { cookie } });
      assert.equal(res.status, 200, path);
      await res.body?.cancel();
    }
    for (const id of ids.slice(0, 3)) {
      const res = await env.services.app.request(`/dashboard/tasks/${id}`, { headers: { cookie } });
      assert.equal(res.status, 200, id);
      assert.ok((await res.text()).includes(id));
    }
    const missing = await env.services.app.request(`/dashboard/tasks/p9-${crypto.randomUUID()}`, {
      headers: { cookie },
    });
    assert.equal(missing.status, 404);
    await missing.body?.cancel();
  } finally {
    await running.stop(1_000);
  }
});

Deno.test("fewer handler slots than partitions: every partition's work is still done", async () => {
  await using env = await partitionedEnv("slots", { partitions: 6 }, { WORKER_CONCURRENCY: "2" });
  const { partitions } = env.services;
  // Work in one partition only, the one whose reader starts last.
  const last = partitions.list.at(-1)!;
  const videos: string[] = [];
  for (let i = 0; videos.length < 5; i++) {
    if (partitions.ofVideo(`slot-${i}`) === last) videos.push(`slot-${i}`);
  }
  const running = await runConsumers(env, { run: ["tasks"] });
  try {
    const ids: string[] = [];
    for (const video of videos) {
      const res = await env.post({ ...JSON.parse(await fixture("minimal.json")), video_id: video });
      ids.push((await res.json()).task_id as string);
    }
    await waitFor(async () => {
      const timelines = await Promise.all(ids.map((id) => last.store.timeline(id)));
      return timelines.every((events) => events.some((e) => e.type === "scenes.generated"));
    }, { what: "every task of the last partition to run", timeoutMs: 15_000 });
  } finally {
    await running.stop(1_000);
  }
});

Deno.test("a claim without its task (a crash between the steps) is completed by the retry, once", async () => {
  await using env = await partitionedEnv("repair", { partitions: 6 });
  const { partitions, redis } = env.services;
  const body = { ...JSON.parse(await fixture("minimal.json")), idempotency_key: "crash-1" };
  const request = VideoRequestSchema.parse(body);
  // The claim as the first attempt left it before it crashed: no task anywhere yet.
  const taskId = partitions.newTaskId(partitions.ofVideo(body.video_id));
  await claimIdempotencyScript.run(redis, {
    keys: {
      claim: partitions.ofClaim(body.user_id, "crash-1").keys.idempotencyClaim(
        body.user_id,
        "crash-1",
      ),
    },
    args: { task_id: taskId, fingerprint: requestFingerprint(request), ttl_s: 60, stale: "" },
  });
  const retry = await env.post(body);
  assert.equal(retry.status, 202);
  assert.equal((await retry.json()).task_id, taskId);
  // Its key in the video's partition lost (evicted, say): the timeline still finds the task.
  const video = partitions.ofVideo(body.video_id);
  await redis.del(video.keys.idempotency(body.user_id, "crash-1"));
  const again = await env.post(body);
  const json = await again.json();
  assert.equal(json.task_id, taskId);
  assert.equal(json.duplicate, true);
  assert.equal(await redis.xlen(video.keys.webhookStream), 1, "appended once");
});

Deno.test("dead letters page over partitions without skipping equal ids", async () => {
  const admin = "partition-dlq-admin-token";
  await using env = await partitionedEnv("dlq-pages", { partitions: 6 }, { ADMIN_TOKEN: admin });
  const { partitions, redis } = env.services;
  // The same stream id in two partitions (one millisecond, two shards), and one later.
  const letter = (
    task: string,
  ) => ["task_id", task, "group", "workers", "entry", "1-0", "error", "x"];
  await redis.xadd(partitions.list[1].keys.deadLetterStream, "1000-0", ...letter("p1-a"));
  await redis.xadd(partitions.list[4].keys.deadLetterStream, "1000-0", ...letter("p4-b"));
  await redis.xadd(partitions.list[2].keys.deadLetterStream, "2000-0", ...letter("p2-c"));
  const seen: string[] = [];
  let after = "";
  for (let page = 0; page < 5; page++) {
    const res = await env.services.app.request(
      `/admin/dead-letters?count=1${after ? `&after=${after}` : ""}`,
      { headers: { authorization: `Bearer ${admin}` } },
    );
    assert.equal(res.status, 200);
    const { dead_letters } = await res.json();
    if (!dead_letters.length) break;
    seen.push(dead_letters[0].id);
    after = dead_letters[0].id;
  }
  assert.deepEqual(seen, ["p1-1000-0", "p4-1000-0", "p2-2000-0"]);
});

Deno.test("a rebuild over every partition is refused before any when one log was trimmed", async () => {
  const admin = "partition-rebuild-admin-token";
  await using env = await partitionedEnv("rb-refuse", { partitions: 6 }, { ADMIN_TOKEN: admin });
  const { partitions, redis } = env.services;
  const ids: string[] = [];
  for (let i = 0; i < 12; i++) {
    const res = await env.post({
      ...JSON.parse(await fixture("minimal.json")),
      video_id: `rr${i}`,
    });
    ids.push((await res.json()).task_id);
  }
  const trimmed = partitions.ofTask(ids[0])!;
  await redis.xtrim(trimmed.keys.eventStream, "MAXLEN", 0);
  const res = await env.services.app.request("/admin/replay", {
    method: "POST",
    headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
    body: JSON.stringify({ projections: true }),
  });
  assert.equal(res.status, 409);
  assert.match((await res.json()).detail, new RegExp(`partition\\(s\\) ${trimmed.index}:`));
  for (const p of partitions.list) assert.equal(await redis.get(p.keys.viewGeneration), null);
});

Deno.test("a stale claim whose task never came is taken over by a retry with another body", async () => {
  await using env = await partitionedEnv("takeover", { partitions: 6 });
  const { partitions, redis } = env.services;
  const body = { ...JSON.parse(await fixture("minimal.json")), idempotency_key: "crash-2" };
  const claimKey = partitions.ofClaim(body.user_id, "crash-2").keys.idempotencyClaim(
    body.user_id,
    "crash-2",
  );
  const ghost = partitions.newTaskId(partitions.ofVideo(body.video_id));
  // A claim left 20 s ago by a request that crashed before its ingest, with another body.
  await redis.set(
    claimKey,
    `${ghost} another-fingerprint`,
    "EX",
    env.config.IDEMPOTENCY_TTL_S - 20,
  );
  const res = await env.post(body);
  assert.equal(res.status, 202);
  const { task_id } = await res.json();
  assert.notEqual(task_id, ghost);
  // A fresh claim (its ingest may be on its way) is not taken over: 409.
  await redis.set(claimKey, `${ghost} another-fingerprint`, "EX", env.config.IDEMPOTENCY_TTL_S);
  const again = await env.post(body);
  assert.equal(again.status, 409);
});

Deno.test("the fingerprint ignores the order of fields, not their values", async () => {
  await using env = await testEnv("fingerprint");
  const base = JSON.parse(await fixture("minimal.json"));
  const first = await env.post({ ...base, idempotency_key: "order-1", extra_a: 1, extra_b: 2 });
  const { task_id } = await first.json();
  const reordered = await env.post({ extra_b: 2, extra_a: 1, idempotency_key: "order-1", ...base });
  assert.equal(reordered.status, 202);
  assert.equal((await reordered.json()).task_id, task_id);
  const changed = await env.post({ ...base, idempotency_key: "order-1", extra_a: 1, extra_b: 3 });
  assert.equal(changed.status, 409);
  await changed.body?.cancel();
});
