import assert from "node:assert/strict";
import type { RedisClient } from "../src/redis/client.ts";
import { RetryableError, UnrecoverableError } from "../src/errors.ts";
import { decodeEvent, type StoredEvent } from "../src/events.ts";
import { applyWrites, fold, type Op } from "../src/projections/definition.ts";
import { Projector } from "../src/projections/projector.ts";
import { resetProjections } from "../src/projections/rebuild.ts";
import {
  createProjections,
  type Projection,
  PROJECTION_NAMES,
  projectionLease,
  type ProjectionName,
} from "../src/projections/registry.ts";
import { ProjectionRunner } from "../src/projections/runner.ts";
import { readStats, stats as statsProjection } from "../src/projections/stats/projection.ts";
import {
  bucketValue,
  FINISHED_WINDOW_S,
  MINUTE_WINDOW,
  statsKeys,
  statsStatusKey,
} from "../src/projections/stats/view.ts";
import {
  evolveTaskIndex,
  indexContents,
  initialTaskIndex,
} from "../src/projections/task_index/view.ts";
import { taskViewKey } from "../src/projections/task_view/view.ts";
import { closeRedis, connectRedis } from "../src/redis/client.ts";
import { projectScript } from "../src/redis/scripts.ts";
import { ensureGroup, groupInfo } from "../src/redis/streams.ts";
import { createPipeline } from "../src/runtime.ts";
import { caughtUp, fixture, runConsumers, type TestEnv, testEnv, waitFor } from "./_helpers.ts";
import { expectedIndex, storedIndex } from "./_task_index.ts";

/** The per-minute series as stored: minute -> that minute's hash, in numbers. */
async function storedMinutes(redis: RedisClient, view: ReturnType<typeof statsKeys>) {
  const out: Record<string, Record<string, number>> = {};
  const index = await redis.hgetall(view.minutes);
  for (const [minute, finished] of Object.entries(index)) {
    const fields = await redis.hgetall(view.minute(minute));
    out[minute] = Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, Number(v)]));
    assert.equal(Number(finished), (out[minute].completed ?? 0) + (out[minute].failed ?? 0));
  }
  return out;
}

/** Every view key of the prefix with its value, for exact comparison. */
async function snapshot(redis: RedisClient, prefix: string) {
  const keys: string[] = [];
  let cursor = "0";
  do {
    const [next, found] = await redis.scan(cursor, "MATCH", `{${prefix}}:view:*`, "COUNT", 1000);
    cursor = next;
    keys.push(...found);
  } while (cursor !== "0");
  const out: Record<string, unknown> = {};
  for (const key of keys.sort()) {
    const type = await redis.type(key);
    if (type === "string") out[key] = await redis.get(key);
    else if (type === "hash") out[key] = await redis.hgetall(key);
    else if (type === "zset") out[key] = await redis.zrange(key, 0, -1, "WITHSCORES");
    else out[key] = type;
  }
  return out;
}

/** Successes, a retry, an unrecoverable failure, exhausted retries, a revision and a poison entry. */
async function mixedRun(env: TestEnv) {
  let flaky = 0;
  const pipeline = createPipeline(env.config, env.services).map((step) =>
    step.name !== "scenes" ? step : {
      name: step.name,
      run: (context: Parameters<typeof step.run>[0]) => {
        const id = context.request.video_id;
        if (id.startsWith("bad-")) return Promise.reject(new UnrecoverableError("Rejected input"));
        if (id.startsWith("down-")) return Promise.reject(new RetryableError("Provider down"));
        if (id.startsWith("flaky-") && flaky++ === 0) {
          return Promise.reject(new RetryableError("Provider hiccup"));
        }
        return step.run(context);
      },
    }
  );
  // Two processes' worth of consumers: the projection leases decide who applies.
  const sets = [
    await runConsumers(env, { pipeline }),
    await runConsumers(env, { pipeline }),
  ];
  const base = JSON.parse(await fixture("minimal.json"));
  const videos = ["ok-1", "ok-2", "flaky-1", "bad-1", "down-1", "ok-3"];
  for (const video_id of videos) {
    assert.equal((await env.post({ ...base, video_id })).status, 202);
  }
  assert.equal((await env.post(await fixture("new-video.json"))).status, 202);
  await env.services.redis.xadd(env.services.keys.webhookStream, "*", "poison", "1");
  const { redis, keys } = env.services;
  await waitFor(async () => {
    const stats = await (await env.services.app.request("/stats")).json();
    return stats.completed_tasks + stats.failed_tasks === videos.length + 1 &&
      await caughtUp(redis, [keys.webhookStream, keys.eventStream]);
  }, { what: "the mixed run to settle", timeoutMs: 20_000 });
  assert.equal((await env.post(await fixture("revision.json"))).status, 202);
  await waitFor(async () => {
    const stats = await (await env.services.app.request("/stats")).json();
    return stats.completed_tasks === 6 && await caughtUp(redis, [keys.eventStream]);
  }, { what: "the revision to settle" });
  return sets;
}

/** Runs `work` while one Projector folds `projections` on a connection of its own. */
async function withProjector<T>(
  env: TestEnv,
  projections: Projection[],
  owner: string,
  work: () => Promise<T>,
): Promise<T> {
  const { redis, keys } = env.services;
  const blocking = connectRedis(env.config.REDIS_URL);
  const projector = new Projector(projections, { redis, blocking, keys, log: env.log, owner });
  await projector.start();
  try {
    return await work();
  } finally {
    await projector.stop();
    await closeRedis(blocking);
  }
}

/** Waits until every projection group has applied the whole log. */
const projectionsCaughtUp = (env: TestEnv) =>
  waitFor(
    () => caughtUp(env.services.redis, [env.services.keys.eventStream], [...PROJECTION_NAMES]),
    {
      what: "the projections to catch up",
    },
  );

Deno.test("stats equal a recount of the log; rebuilt views equal the live ones", async () => {
  await using env = await testEnv("rebuild", { MAX_ATTEMPTS: "2", RETRY_BASE_MS: "5" });
  const { redis, keys } = env.services;
  const sets = await mixedRun(env);
  for (const set of sets) await set.stop(1_000);

  const stats = await (await env.services.app.request("/stats")).json();
  assert.equal(stats.total_requests, 8);
  assert.equal(stats.completed_tasks, 6);
  assert.equal(stats.failed_tasks, 2);
  assert.equal(stats.dead_lettered_tasks, 2);
  assert.equal(stats.queued_tasks + stats.processing_tasks, 0);

  // Recount: fold every event of the log from scratch with the pure evolve function.
  const log = await redis.xrange(keys.eventStream, "-", "+");
  const recount = fold(statsProjection, log.map(([id, fields]) => decodeEvent(id, fields)));
  const view = keys.views(0).prefix;
  const statsView = statsKeys(view);
  const numbers = (hash: Record<string, string>) =>
    Object.fromEntries(Object.entries(hash).map(([k, v]) => [k, Number(v)]));
  assert.deepEqual(numbers(await redis.hgetall(statsView.counters)), recount.counters);
  assert.deepEqual(numbers(await redis.hgetall(statsView.durations)), recount.durations);
  assert.deepEqual(numbers(await redis.hgetall(statsView.finished)), recount.finished);
  assert.deepEqual(await storedMinutes(redis, statsView), recount.minutes);
  assert.ok(Object.keys(recount.minutes).length > 0, "the run finished tasks");
  // The task index equals the pure fold of the log (with the configured retention).
  const indexed = log.map(([id, fields]) => decodeEvent(id, fields))
    .reduce(evolveTaskIndex, initialTaskIndex(env.config.VIEW_RETENTION_S));
  assert.equal(Object.keys(indexed.tasks).length, 8);
  for (const [id, task] of Object.entries(indexed.tasks)) {
    const projected = JSON.parse((await redis.get(taskViewKey(view, id)))!);
    assert.equal(task.status, projected.status, `${id}: the index has the task view's status`);
  }
  assert.deepEqual(await storedIndex(redis, view), expectedIndex(indexContents(indexed, view)));
  // Bounded: one status key per task, each expiring with VIEW_RETENTION_S.
  for (const [task, status] of Object.entries(recount.status)) {
    assert.equal(await redis.get(statsStatusKey(view, task)), status, task);
    const ttl = await redis.ttl(statsStatusKey(view, task));
    assert.ok(ttl > 0 && ttl <= env.config.VIEW_RETENTION_S, `${task} TTL ${ttl}`);
  }

  const before = await snapshot(redis, env.prefix);
  assert.ok(Object.keys(before).length >= 10, "views exist");
  const projections = createProjections({
    redis,
    keys,
    viewTtlS: env.config.VIEW_RETENTION_S,
  });
  await resetProjections(redis, keys, projections);
  assert.deepEqual(await snapshot(redis, env.prefix), {});

  const rebuild = await runConsumers(env, { run: ["scenes", "callbacks", "projections"] });
  try {
    await waitFor(() => caughtUp(redis, [keys.eventStream]), { what: "rebuild caught up" });
    assert.deepEqual(await snapshot(redis, env.prefix), before);
  } finally {
    await rebuild.stop(1_000);
  }
});

Deno.test("redelivered events are not applied twice", async () => {
  await using env = await testEnv("redeliver");
  const { redis, keys } = env.services;
  const first = await runConsumers(env);
  await env.post(await fixture("new-video.json"));
  await env.post(await fixture("minimal.json"));
  await waitFor(async () => {
    const stats = await (await env.services.app.request("/stats")).json();
    return stats.completed_tasks === 2 && await caughtUp(redis, [keys.eventStream]);
  });
  await first.stop(1_000);
  const before = await snapshot(redis, env.prefix);

  // Rewind every projection group: the whole log is delivered again.
  for (const group of PROJECTION_NAMES) await redis.xgroup("SETID", keys.eventStream, group, "0");
  // And leave an entry pending, as a crashed lease holder would.
  await redis.xreadgroup(
    "GROUP",
    "stats",
    "projector",
    "COUNT",
    3,
    "STREAMS",
    keys.eventStream,
    ">",
  );
  const again = await runConsumers(env, { run: ["scenes", "callbacks", "projections"] });
  try {
    await waitFor(() => caughtUp(redis, [keys.eventStream]), { what: "redelivery consumed" });
    assert.deepEqual(await snapshot(redis, env.prefix), before);
    const stats = await (await env.services.app.request("/stats")).json();
    assert.equal(stats.total_requests, 2);
    assert.equal(stats.completed_tasks, 2);
  } finally {
    await again.stop(1_000);
  }
});

Deno.test("a projector without the lease writes nothing", async () => {
  await using env = await testEnv("lease");
  const { redis, keys } = env.services;
  const view = keys.views(0).prefix;
  await redis.set(projectionLease(keys, 0), "someone-else", "PX", 60_000);
  const consumers = await runConsumers(env, { run: ["scenes", "callbacks", "projections"] });
  try {
    const res = await env.post(await fixture("minimal.json"));
    const { task_id } = await res.json();
    await waitFor(() => caughtUp(redis, [keys.eventStream], ["scene-sink", "callbacks"]), {
      what: "the scene sink and the callbacks to catch up",
    });
    // A projector with the lease would have had several read cycles (250 ms each): no view
    // exists, and no projection group has moved.
    await new Promise((resolve) => setTimeout(resolve, 600));
    assert.equal(await redis.exists(taskViewKey(view, task_id)), 0, "views wait for the lease");
    assert.equal(await redis.exists(statsKeys(view).counters), 0, "stats wait for the lease");
    for (const g of await groupInfo(redis, keys.eventStream)) {
      if (PROJECTION_NAMES.includes(g.name as ProjectionName)) {
        assert.ok((g.lag ?? 1) > 0, `${g.name} has applied nothing`);
      }
    }
    await redis.del(projectionLease(keys, 0));
    await waitFor(
      async () => await redis.hget(statsKeys(view).counters, "total_requests") === "1",
      { what: "stats after the lease frees" },
    );
    await waitFor(async () => await redis.exists(taskViewKey(view, task_id)), {
      what: "the task view after the lease frees",
    });
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("following a rebuilt generation closes the old projectors' connections", async () => {
  await using env = await testEnv("follow-close");
  const opened: RedisClient[] = [];
  const runner = new ProjectionRunner({
    redis: env.services.redis,
    keys: env.services.keys,
    log: env.log,
    owner: "test",
    viewTtlS: 60,
    pollMs: 50,
    blocking: (name) => {
      const connection = connectRedis(env.config.REDIS_URL, { name });
      opened.push(connection);
      return connection;
    },
  });
  await runner.start();
  try {
    // One projector (and blocking connection) folds every projection of a generation.
    const n = 1;
    assert.equal(opened.length, n);
    await env.services.redis.set(env.services.keys.viewGeneration, 1);
    await waitFor(() => runner.generation === 1 && opened.length === 2 * n, {
      what: "the runner to follow generation 1",
    });
    await waitFor(() => opened.slice(0, n).every((c) => c.status === "end"), {
      what: "generation 0's connections to close",
    });
    assert.ok(opened.slice(n).every((c) => c.status !== "end"));
  } finally {
    await runner.stop();
  }
  await waitFor(() => opened.every((c) => c.status === "end"), { what: "stop to close the rest" });
});

Deno.test("each projection goes on from its own checkpoint; a batch planned from a moved one is refused", async () => {
  await using env = await testEnv("own-checkpoints");
  const { redis, keys } = env.services;
  const view = keys.views(0).prefix;
  const base = JSON.parse(await fixture("minimal.json"));
  const ids: string[] = [];
  for (const video of ["x", "y"]) {
    ids.push((await (await env.post({ ...base, video_id: video })).json()).task_id);
  }
  const [first] = await redis.xrange(keys.eventStream, "-", "+", "COUNT", 1);
  const projections = createProjections({ redis, keys, viewTtlS: 60 });
  for (const p of projections) await ensureGroup(redis, keys.eventStream, p.group);
  // As if a former holder had applied the first event to the task view only.
  await redis.set(keys.checkpoint("task-view"), first[0]);

  // Planned from "0-0" for the task view, whose checkpoint has moved: refused, nothing written.
  await redis.set(projectionLease(keys, 0), "a", "PX", 60_000);
  const stale = await projectScript.run(redis, {
    keys: {
      lease: projectionLease(keys, 0),
      events: keys.eventStream,
      view_generation: keys.viewGeneration,
    },
    args: { owner: "a", generation: 0, projections: 1 },
  }, {
    keys: [keys.checkpoint("task-view")],
    args: ["task-view", "0-0", first[0], 1, JSON.stringify([["SET", `${view}:probe`, "1"]])],
  });
  assert.equal(stale, -2);
  assert.equal(await redis.exists(`${view}:probe`), 0);
  await redis.del(projectionLease(keys, 0));

  await withProjector(env, projections, "b", () => projectionsCaughtUp(env));
  // The task view skipped the event before its checkpoint; stats folded both from "0-0".
  assert.equal(await redis.exists(taskViewKey(view, ids[0])), 0);
  assert.equal(await redis.exists(taskViewKey(view, ids[1])), 1);
  assert.equal((await readStats(redis, keys, Date.now(), 60_000)).total_requests, 2);
});

Deno.test("projection groups stand at their checkpoints: lag counts what is left, nothing stays pending", async () => {
  await using env = await testEnv("group-positions");
  const { redis, keys } = env.services;
  const base = JSON.parse(await fixture("minimal.json"));
  const post = async (n: number) => {
    for (let i = 0; i < n; i++) {
      await (await env.post({ ...base, video_id: `v${Math.random()}` })).body?.cancel();
    }
  };
  await post(3);
  const projections = createProjections({ redis, keys, viewTtlS: 60 });
  for (const p of projections) await ensureGroup(redis, keys.eventStream, p.group);
  // Entries left pending by a version that read the groups with XREADGROUP.
  await redis.xreadgroup(
    "GROUP",
    "stats",
    "projector",
    "COUNT",
    2,
    "STREAMS",
    keys.eventStream,
    ">",
  );
  const groups = async () =>
    (await groupInfo(redis, keys.eventStream)).filter((g) =>
      PROJECTION_NAMES.includes(g.name as ProjectionName)
    );
  await withProjector(env, projections, "p", () => projectionsCaughtUp(env));
  const [last] = await redis.xrevrange(keys.eventStream, "+", "-", "COUNT", 1);
  for (const g of await groups()) {
    assert.equal(g.last_delivered_id, last[0], g.name);
    assert.equal(await redis.get(keys.checkpoint(g.name)), last[0], g.name);
    assert.equal(g.pending, 0, g.name);
  }
  // Projectors stopped: the lag is a count (not unknown) of the events since.
  await post(2);
  for (const g of await groups()) assert.equal(g.lag, 2, g.name);
  await withProjector(env, projections, "p", () => projectionsCaughtUp(env));
  await post(1);
  for (const g of await groups()) assert.equal(g.lag, 1, g.name);
  assert.equal((await readStats(redis, keys, Date.now(), 60_000)).total_requests, 5);
});

Deno.test("a runner whose switch to a new generation fails retries it on the next check", async () => {
  await using env = await testEnv("follow-retry");
  const opened: { name: string; connection: RedisClient }[] = [];
  let failOnce = true;
  const runner = new ProjectionRunner({
    redis: env.services.redis,
    keys: env.services.keys,
    log: env.log,
    owner: "test",
    viewTtlS: 60,
    pollMs: 50,
    blocking: (name) => {
      if (name.endsWith("@1") && failOnce) {
        failOnce = false;
        throw new Error("no connection this time");
      }
      const connection = connectRedis(env.config.REDIS_URL, { name });
      opened.push({ name, connection });
      return connection;
    },
  });
  await runner.start();
  try {
    await env.services.redis.set(env.services.keys.viewGeneration, 1);
    await waitFor(() => !failOnce && runner.generation === 1, {
      what: "the runner to follow generation 1 after a failed try",
    });
    // Generation 1's projector runs, nothing of the failed try is left open.
    const n = 1;
    const open = () => opened.filter((c) => c.connection.status !== "end");
    await waitFor(() => open().length === n, {
      what: "exactly one open connection",
    });
    assert.equal(open().filter((c) => c.name.endsWith("@1")).length, n);
  } finally {
    await runner.stop();
  }
});

Deno.test("stats keys stay bounded and do not depend on batch boundaries", async () => {
  await using env = await testEnv("stats-bounded");
  const { redis, keys } = env.services;
  // 400 tasks finishing over 400 seconds (event times), a few out of order, one completing twice.
  const events: StoredEvent[] = [];
  const t0 = Date.UTC(2025, 0, 1);
  let seq = 0;
  const on = (task: string, type: string, second: number, data: unknown) => {
    seq += 1;
    const at = new Date(t0 + second * 1000).toISOString();
    events.push({ id: `${seq}-0`, type, task_id: task, at, data } as StoredEvent);
  };
  for (let i = 0; i < 400; i++) {
    const task = `t${i}`;
    const second = i % 50 === 7 ? i - 30 : i;
    on(task, "task.queued", second, {
      video_id: "v",
      user_id: "u",
      is_revision: false,
      webhook_entry: "1-0",
    });
    on(task, "task.started", second, { attempt: 1, worker: "w" });
    if (i % 10 === 3) {
      on(task, "task.failed", second, { error: "x", retryable: false, attempt: 1, final: true });
    } else {
      on(task, "task.completed", second, {
        video_id: "v",
        result: {
          scenes: [],
          image_url: "https://example.com/i.png",
          reframed: true,
          provider: { reframe: "offline", scenes: "offline" },
          revision: false,
          video_revision: 1,
        },
        duration_ms: 37 + i * 113,
      });
    }
  }
  const recount = fold(statsProjection, events);
  const numbers = (hash: Record<string, string>) =>
    Object.fromEntries(Object.entries(hash).map(([k, v]) => [k, Number(v)]));
  for (const [generation, size] of [[1, 1], [2, 7], [3, 500]]) {
    const prefix = keys.views(generation).prefix;
    for (let i = 0; i < events.length; i += size) {
      const ops = await statsProjection.plan(
        { redis, prefix, viewTtlS: 60 },
        events.slice(i, i + size),
      );
      await applyWrites(redis, ops);
    }
    const view = statsKeys(prefix);
    assert.deepEqual(numbers(await redis.hgetall(view.counters)), recount.counters, `${size}`);
    assert.deepEqual(numbers(await redis.hgetall(view.durations)), recount.durations, `${size}`);
    assert.deepEqual(numbers(await redis.hgetall(view.finished)), recount.finished, `${size}`);
    assert.deepEqual(await storedMinutes(redis, view), recount.minutes, `${size}`);
    assert.ok(await redis.hlen(view.finished) <= FINISHED_WINDOW_S + 1);
    assert.ok(await redis.hlen(view.minutes) <= MINUTE_WINDOW + 1);
    assert.ok(await redis.hlen(view.durations) <= 100 + 90 * 3, "fixed buckets up to 100 s");
    assert.equal(await redis.ttl(statsStatusKey(prefix, "t399")) <= 60, true);
  }
  await redis.set(keys.viewGeneration, 3);
  const stats = await readStats(redis, keys, t0 + 399_500, 60_000);
  assert.equal(stats.completed_tasks, 360);
  assert.equal(stats.failed_tasks, 40);
  // Seconds 340..399: 60 tasks, less t357 (its events say second 327; t387's say 357).
  assert.equal(stats.throughput_last_minute.finished, 59);
  const exact = Array.from({ length: 400 }, (_, i) => i).filter((i) => i % 10 !== 3)
    .map((i) => 37 + i * 113);
  const p95 = exact[Math.ceil(0.95 * exact.length) - 1];
  assert.ok(Math.abs(stats.processing_time_ms.p95 - p95) / p95 <= 0.05);
});

Deno.test("the last hour per minute is bounded, batch-independent and read as 60 minutes", async () => {
  await using env = await testEnv("stats-minutes");
  const { redis, keys } = env.services;
  // A task finishing every 30 s for two hours (event times); every fifth fails; one arrives late.
  const t0 = Date.UTC(2025, 0, 1);
  const events: StoredEvent[] = [];
  let seq = 0;
  const on = (task: string, type: string, ms: number, data: unknown) => {
    seq += 1;
    events.push(
      { id: `${seq}-0`, type, task_id: task, at: new Date(ms).toISOString(), data } as StoredEvent,
    );
  };
  for (let i = 0; i < 240; i++) {
    const ms = i === 200 ? t0 + 5 * 30_000 : t0 + i * 30_000;
    on(`t${i}`, "task.queued", ms, {
      video_id: "v",
      user_id: "u",
      is_revision: false,
      webhook_entry: "1-0",
    });
    on(`t${i}`, "task.started", ms, { attempt: 1, worker: "w" });
    if (i % 5 === 0) {
      on(`t${i}`, "task.failed", ms, { error: "x", retryable: false, attempt: 1, final: true });
    } else {
      on(`t${i}`, "task.completed", ms, {
        video_id: "v",
        result: {
          scenes: [],
          image_url: "https://example.com/i.png",
          reframed: true,
          provider: { reframe: "offline", scenes: "offline" },
          revision: false,
          video_revision: 1,
        },
        duration_ms: 1_000 + (i % 4) * 1_000,
      });
    }
  }
  const recount = fold(statsProjection, events);
  assert.equal(Object.keys(recount.minutes).length, MINUTE_WINDOW + 1);
  for (const [generation, size] of [[1, 1], [2, 9], [3, 1_000]]) {
    const prefix = keys.views(generation).prefix;
    for (let i = 0; i < events.length; i += size) {
      const ops = await statsProjection.plan(
        { redis, prefix, viewTtlS: 60 },
        events.slice(i, i + size),
      );
      await applyWrites(redis, ops);
    }
    const view = statsKeys(prefix);
    assert.deepEqual(await storedMinutes(redis, view), recount.minutes, `batches of ${size}`);
    // No minute hash outlives its field in the index.
    const [, hashes] = await redis.scan("0", "MATCH", view.minutePattern, "COUNT", 10_000);
    assert.equal(hashes.length, MINUTE_WINDOW + 1);
  }
  await redis.set(keys.viewGeneration, 3);
  const stats = await readStats(redis, keys, t0 + 239 * 30_000 + 10_000, 60_000);
  const { minutes } = stats.last_hour;
  assert.equal(minutes.length, 60);
  assert.equal(minutes[59].minute, new Date(t0 + 119 * 60_000).toISOString());
  // Two finishes a minute, but t200's came late (minute 2, trimmed) instead of in minute 100.
  const late = new Date(t0 + 100 * 60_000).toISOString();
  for (const m of minutes) assert.equal(m.finished, m.minute === late ? 1 : 2, m.minute);
  assert.equal(stats.last_hour.finished, 119);
  // Percentiles over the hour's completions (nearest rank; whole seconds are exact buckets).
  const hour = Array.from({ length: 240 }, (_, i) => i)
    .filter((i) => i >= 120 && i !== 200 && i % 5 !== 0)
    .map((i) => 1_000 + (i % 4) * 1_000).sort((a, b) => a - b);
  const rank = (q: number) => bucketValue(hour[Math.ceil(q * hour.length) - 1]);
  assert.deepEqual(stats.last_hour.processing_time_ms, { p50: rank(0.5), p95: rank(0.95) });
  const m60 = minutes.find((m) => m.minute === new Date(t0 + 60 * 60_000).toISOString())!;
  assert.deepEqual([m60.completed, m60.failed], [1, 1]); // tasks 120 (fails) and 121
});

/** project.lua called directly under a lease of "a": blocks of [group, expected, next, entries, writes]. */
async function project(env: TestEnv, blocks: [string, string, string, number, Op[]][]) {
  const { redis, keys } = env.services;
  await redis.set(projectionLease(keys, 0), "a", "PX", 60_000);
  const args: (string | number)[] = [];
  for (const [group, expected, next, entries, writes] of blocks) {
    args.push(group, expected, next, entries, writes.length);
  }
  for (const [, , , , writes] of blocks) for (const op of writes) args.push(op.length, ...op);
  return await projectScript.run(redis, {
    keys: {
      lease: projectionLease(keys, 0),
      events: keys.eventStream,
      view_generation: keys.viewGeneration,
    },
    args: { owner: "a", generation: 0, projections: blocks.length },
  }, { keys: blocks.map(([group]) => keys.checkpoint(group)), args });
}

Deno.test("a checkpoint set back under a running projector (a failover) is folded again from there", async () => {
  await using env = await testEnv("rewind");
  const { redis, keys } = env.services;
  const view = keys.views(0).prefix;
  const base = JSON.parse(await fixture("minimal.json"));
  const post = async (video: string) =>
    (await (await env.post({ ...base, video_id: video })).json()).task_id as string;
  const ids = [await post("a"), await post("b"), await post("c"), await post("d")];
  const projections = createProjections({ redis, keys, viewTtlS: 60 });
  await withProjector(env, projections, "p", async () => {
    await projectionsCaughtUp(env);
    // A replica that had only the first two events' writes is promoted: the checkpoints and the
    // views of the last two tasks go back; the projector still holds the later checkpoints.
    const [, second] = await redis.xrange(keys.eventStream, "-", "+", "COUNT", 2);
    for (const p of projections) await redis.set(keys.checkpoint(p.group), second[0]);
    await redis.del(taskViewKey(view, ids[2]), taskViewKey(view, ids[3]));
    const fifth = await post("e");
    await waitFor(async () => await redis.exists(taskViewKey(view, fifth)), {
      what: "the new task's view",
    });
    await waitFor(
      async () =>
        await redis.exists(taskViewKey(view, ids[2])) &&
        await redis.exists(taskViewKey(view, ids[3])),
      { what: "the views the failover lost, folded again" },
    );
  });
});

Deno.test("project.lua: entries another version left pending are acked only up to the checkpoint; lag stays a count", async () => {
  await using env = await testEnv("leftovers");
  const { redis, keys } = env.services;
  const base = JSON.parse(await fixture("minimal.json"));
  for (const video of ["a", "b", "c", "d", "e"]) {
    await (await env.post({ ...base, video_id: video })).body?.cancel();
  }
  await ensureGroup(redis, keys.eventStream, "stats");
  // An older version read four entries with XREADGROUP and applied the first two.
  const read = await redis.xreadgroup(
    "GROUP",
    "stats",
    "projector",
    "COUNT",
    4,
    "STREAMS",
    keys.eventStream,
    ">",
  ) as [string, [string, string[]][]][];
  const ids = read[0][1].map(([id]) => id);
  await redis.set(keys.checkpoint("stats"), ids[1]);
  assert.equal(await project(env, [["stats", ids[1], ids[1], 0, []]]), 1);
  const pending = await redis.xpending(keys.eventStream, "stats", "-", "+", 10) as [string][];
  assert.deepEqual(pending.map(([id]) => id), ids.slice(2), "the unapplied ones stay pending");
  const stats = (await groupInfo(redis, keys.eventStream)).find((g) => g.name === "stats")!;
  assert.equal(stats.last_delivered_id, ids[1]);
  assert.equal(stats.lag, 3, "a count, though the group stood ahead of its checkpoint");
});

Deno.test("project.lua: a write that fails leaves the projections before it applied and moved on", async () => {
  await using env = await testEnv("partial");
  const { redis, keys } = env.services;
  await (await env.post(await fixture("minimal.json"))).body?.cancel();
  const [[first]] = await redis.xrange(keys.eventStream, "-", "+", "COUNT", 1);
  for (const group of ["task-view", "stats"]) await ensureGroup(redis, keys.eventStream, group);
  const probe = `${env.prefix}:probe`;
  await redis.set(`${probe}:string`, "x");
  await assert.rejects(
    project(env, [
      ["task-view", "0-0", first, 1, [["SET", `${probe}:view`, "1"]]],
      ["stats", "0-0", first, 1, [["HINCRBY", `${probe}:string`, "n", 1]]],
    ]),
    /WRONGTYPE/,
  );
  assert.equal(await redis.get(`${probe}:view`), "1");
  assert.equal(await redis.get(keys.checkpoint("task-view")), first);
  assert.equal(await redis.get(keys.checkpoint("stats")), null, "stats is planned again");
  // The retry of the same batch is refused: the task view's checkpoint moved.
  assert.equal(
    await project(env, [
      ["task-view", "0-0", first, 1, [["SET", `${probe}:view`, "2"]]],
      ["stats", "0-0", first, 1, []],
    ]),
    -2,
  );
  assert.equal(await redis.get(`${probe}:view`), "1");
});
