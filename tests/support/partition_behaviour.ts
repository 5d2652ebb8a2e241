/**
 * The behaviour of a partitioned deployment, as steps any Redis can run: the shared single node
 * (tests/partitions_test.ts) or a Redis Cluster (tests/cluster_test.ts passes its
 * REDIS_CLUSTER_NODES in `env`). Every step has its own key prefix and cleans up after itself.
 *
 * @example
 * ```ts
 * Deno.test("partitions on the cluster", async (t) => {
 *   await partitionBehaviour(t, { partitions: 6, env: { REDIS_CLUSTER_NODES: nodes } });
 * });
 * ```
 */
import assert from "node:assert/strict";
import { UnrecoverableError } from "../../src/errors.ts";
import type { TaskView } from "../../src/projections/task_view/view.ts";
import { rebuildPartitions } from "../../src/projections/rebuild.ts";
import { redisTarget } from "../../src/redis/client.ts";
import { reprocessTasks } from "../../src/replay/reprocess.ts";
import { applyRetention } from "../../src/replay/retention.ts";
import { createPipeline } from "../../src/runtime.ts";
import { caughtUp, fixture, runConsumers, type TestEnv, testEnv, waitFor } from "../_helpers.ts";

export interface PartitionBehaviourOptions {
  /** PARTITIONS (6 in the runs). */
  partitions: number;
  /** Extra environment: REDIS_URL, or REDIS_CLUSTER_NODES for a cluster. */
  env?: Record<string, string>;
  /** Steps to leave out (by name), e.g. the slower ones on a cluster. */
  skip?: string[];
}

/** A test env with PARTITIONS set (and the caller's Redis). */
export async function partitionedEnv(
  name: string,
  options: PartitionBehaviourOptions,
  env: Record<string, string> = {},
): Promise<TestEnv> {
  const test = await testEnv(name, {
    PARTITIONS: String(options.partitions),
    ...options.env,
    ...env,
  });
  await test.services.partitions.checkCount();
  return test;
}

/** Every partition's streams caught up by every group. */
export async function allCaughtUp(env: TestEnv): Promise<boolean> {
  for (const { keys } of env.services.partitions.list) {
    if (!await caughtUp(env.services.redis, [keys.webhookStream, keys.eventStream])) return false;
  }
  return true;
}

const ADMIN = "partition-test-admin-token";

const request = async (patch: object = {}) => ({
  ...JSON.parse(await fixture("minimal.json")),
  ...patch,
});

async function submit(env: TestEnv, patch: object = {}): Promise<string> {
  const res = await env.post(await request(patch));
  assert.equal(res.status, 202, await res.clone().text());
  return (await res.json()).task_id;
}

async function view(env: TestEnv, taskId: string): Promise<TaskView> {
  const res = await env.services.app.request(`/task/${taskId}`);
  assert.equal(res.status, 200, `GET /task/${taskId}: ${res.status}`);
  return await res.json();
}

async function settledAll(env: TestEnv, taskIds: string[], run = 1): Promise<TaskView[]> {
  return await waitFor(async () => {
    const views = await Promise.all(taskIds.map((id) => view(env, id)));
    const done = views.every((v) =>
      v.run === run && (v.status === "completed" || v.status === "failed")
    );
    return done && await allCaughtUp(env) ? views : null;
  }, { what: `${taskIds.length} tasks settled (run ${run})`, timeoutMs: 30_000 });
}

async function stats(env: TestEnv) {
  return await (await env.services.app.request("/stats")).json();
}

/** Runs each behaviour as a step of `t`. */
export async function partitionBehaviour(
  t: Deno.TestContext,
  options: PartitionBehaviourOptions,
): Promise<void> {
  const n = options.partitions;
  const step = async (name: string, fn: () => Promise<void>) => {
    if (!options.skip?.includes(name)) await t.step(name, fn);
  };

  await step("ingest spreads tasks over the partitions by video", async () => {
    await using env = await partitionedEnv("spread", options);
    const ids = await Promise.all(
      Array.from({ length: 60 }, (_, i) => submit(env, { video_id: `spread-${i}` })),
    );
    const { partitions } = env.services;
    const used = new Set(ids.map((id) => partitions.ofTask(id)!.index));
    assert.ok(used.size >= Math.min(n, 4), `60 videos landed in ${used.size} of ${n} partitions`);
    let stored = 0;
    for (const p of partitions.list) {
      const length = await env.services.redis.xlen(p.keys.webhookStream);
      const here = ids.filter((id) => partitions.ofTask(id) === p).length;
      assert.equal(length, here, `partition ${p.index} holds its own tasks`);
      stored += length;
    }
    assert.equal(stored, 60);
    for (const id of ids.slice(0, 10)) {
      assert.equal((await view(env, id)).status, "queued");
      const events = await env.services.app.request(`/task/${id}/events`);
      assert.equal(events.status, 200);
    }
    // An id naming a partition that does not exist is an unknown task.
    const missing = await env.services.app.request(`/task/p${n}-${crypto.randomUUID()}`);
    assert.equal(missing.status, 404);
  });

  await step("50 concurrent posts with one idempotency key make one task", async () => {
    await using env = await partitionedEnv("idem", options);
    const body = await request({ video_id: "idem-video", idempotency_key: "same-key-1" });
    const replies = await Promise.all(
      Array.from(
        { length: 50 },
        () => env.post(body).then(async (r) => [r.status, await r.json()]),
      ),
    );
    const statuses = new Set(replies.map(([status]) => status));
    assert.deepEqual([...statuses], [202]);
    const ids = new Set(replies.map(([, json]) => json.task_id));
    assert.equal(ids.size, 1, `one task, got ${[...ids]}`);
    assert.equal(replies.filter(([, json]) => !json.duplicate).length, 1);
    let stored = 0;
    for (const p of env.services.partitions.list) {
      stored += await env.services.redis.xlen(p.keys.webhookStream);
    }
    assert.equal(stored, 1);
  });

  await step("a reused idempotency key with another body is refused with 409", async () => {
    await using env = await partitionedEnv("conflict", options);
    const first = await env.post(await request({ video_id: "vid-a", idempotency_key: "k-409" }));
    assert.equal(first.status, 202);
    const { task_id } = await first.json();
    // Another prompt, and another video (most likely another partition): both conflict.
    for (const patch of [{ prompt: "something else entirely" }, { video_id: "vid-b-other" }]) {
      const again = await env.post(
        await request({ video_id: "vid-a", idempotency_key: "k-409", ...patch }),
      );
      assert.equal(again.status, 409);
      assert.match(again.headers.get("content-type") ?? "", /application\/problem\+json/);
      const problem = await again.json();
      assert.equal(problem.task_id, task_id);
    }
    // The same body again is the same task.
    const same = await env.post(await request({ video_id: "vid-a", idempotency_key: "k-409" }));
    assert.equal((await same.json()).task_id, task_id);
  });

  await step("workers over every partition complete tasks; revisions never collide", async () => {
    await using env = await partitionedEnv("workers", options, { WORKER_CONCURRENCY: "8" });
    const running = await runConsumers(env);
    try {
      const ids = await Promise.all([
        ...Array.from({ length: 24 }, (_, i) => submit(env, { video_id: `work-${i}` })),
        // One video, many tasks at once: each gets its own revision.
        ...Array.from({ length: 6 }, () => submit(env, { video_id: "one-video" })),
      ]);
      const views = await settledAll(env, ids);
      assert.ok(views.every((v) => v.status === "completed"), JSON.stringify(views.at(0)));
      const revisions = views.slice(24).map((v) => v.result?.video_revision);
      assert.equal(new Set(revisions).size, 6, `revisions ${revisions}`);
      const s = await stats(env);
      assert.equal(s.total_requests, 30);
      assert.equal(s.completed_tasks, 30);
      assert.equal(s.queued_tasks + s.processing_tasks, 0);
      assert.equal(s.throughput_last_minute.finished, 30);
      assert.ok(s.processing_time_ms.p95 >= s.processing_time_ms.p50);
      if (n > 1) {
        const parts = new Set(s.consumer_groups.map((g: { partition: number }) => g.partition));
        assert.equal(parts.size, n);
      }
      const health = await env.services.app.request("/health");
      const report = await health.json();
      assert.equal(health.status, 200, JSON.stringify(report.problems));
      assert.equal(report.consumer_groups.length, s.consumer_groups.length);
      const scenes = await env.services.app.request("/videos/one-video/scenes");
      assert.equal(scenes.status, 200);
      assert.equal((await scenes.json()).revision, 6);
    } finally {
      await running.stop(2_000);
    }
  });

  await step(
    "projections apply once per partition, and a rebuild equals the live views",
    async () => {
      await using env = await partitionedEnv("rebuild", options);
      const running = await runConsumers(env);
      let ids: string[];
      try {
        ids = await Promise.all(
          Array.from({ length: 18 }, (_, i) => submit(env, { video_id: `rb-${i % 9}` })),
        );
        await settledAll(env, ids);
      } finally {
        await running.stop(2_000);
      }
      const before = await Promise.all(ids.map((id) => view(env, id)));
      const statsBefore = await stats(env);
      assert.equal(statsBefore.completed_tasks, 18);
      const result = await rebuildPartitions({
        redis: env.services.redis,
        redisTarget: redisTarget(env.config),
        log: env.log,
        viewTtlS: env.config.VIEW_RETENTION_S,
        owner: "test-rebuild",
      }, env.services.partitions.list.map((p) => p.keys));
      assert.equal(result.generation, 1);
      if (n > 1) assert.equal(result.partitions?.length, n);
      const after = await Promise.all(ids.map((id) => view(env, id)));
      assert.deepEqual(after, before);
      const statsAfter = await stats(env);
      for (const field of ["total_requests", "completed_tasks", "failed_tasks"]) {
        assert.equal(statsAfter[field], statsBefore[field], field);
      }
      assert.deepEqual(statsAfter.processing_time_ms, statsBefore.processing_time_ms);
    },
  );

  await step("reprocess and redrive work on one partition or all", async () => {
    await using env = await partitionedEnv("redrive", options, { ADMIN_TOKEN: ADMIN });
    const broken = { on: true };
    const pipeline = createPipeline(env.config, env.services).map((s) =>
      s.name !== "scenes" ? s : {
        name: s.name,
        run: (context: Parameters<typeof s.run>[0]) =>
          broken.on && context.request.video_id.startsWith("broken-")
            ? Promise.reject(new UnrecoverableError("Scene writer rejected the prompt"))
            : s.run(context),
      }
    );
    const running = await runConsumers(env, { pipeline });
    try {
      const ids = await Promise.all(
        Array.from({ length: 6 }, (_, i) => submit(env, { video_id: `broken-${i}` })),
      );
      await settledAll(env, ids);
      broken.on = false;
      const { partitions } = env.services;
      const target = partitions.ofTask(ids[0])!;
      // Redrive only the first task's partition: its dead letters, nobody else's.
      const admin = await redriveVia(env, target.index);
      const inTarget = ids.filter((id) => partitions.ofTask(id) === target);
      assert.deepEqual(admin.sort(), [...inTarget].sort());
      await settledAll(env, inTarget, 2);
      // Reprocess the rest by time window over all partitions (the redriven ones are run 2 now
      // and completed: reprocessed again only if failed).
      const outcomes = await reprocessTasks(partitions.scope(), {
        since: new Date(Date.now() - 60_000),
        status: "failed",
      }, { requestedBy: "test", reason: "fixed", dryRun: false, now: new Date() });
      const rest = ids.filter((id) => !inTarget.includes(id));
      assert.deepEqual(outcomes.map((o) => o.task_id).sort(), [...rest].sort());
      const views = await settledAll(env, rest, 2);
      assert.ok(views.every((v) => v.status === "completed"));
      // An id in a partition outside the scope is not found there.
      if (n > 1) {
        const other = partitions.list.find((p) => p !== target)!;
        const [outcome] = await reprocessTasks(partitions.scope(other.index), {
          taskIds: [ids[0]],
        }, { requestedBy: "test", reason: "x", dryRun: true, now: new Date() });
        assert.equal(outcome.skipped, "unknown task");
      }
    } finally {
      await running.stop(2_000);
    }
  });

  await step("the all-tasks event stream reads every partition and resumes exactly", async () => {
    await using env = await partitionedEnv("sse", options, { ADMIN_TOKEN: ADMIN });
    const first = await Promise.all(
      Array.from({ length: 6 }, (_, i) => submit(env, { video_id: `sse-${i}` })),
    );
    // A plain id resumes every partition after it: here, from the start.
    const all = await readEvents(env, "/events/stream?last_event_id=0-0", first.length);
    assert.deepEqual(all.map((e) => e.task_id).sort(), [...first].sort());
    const position = all.at(-1)!.id;
    assert.equal(position.split(",").length, n, `a position per partition: ${position}`);
    const more = await Promise.all(
      Array.from({ length: 3 }, (_, i) => submit(env, { video_id: `sse-more-${i}` })),
    );
    const resumed = await readEvents(env, "/events/stream", more.length, position);
    assert.deepEqual(resumed.map((e) => e.task_id).sort(), [...more].sort());
    // A new client (no Last-Event-ID) gets live events only; its ids name every partition's live
    // position, so resuming with one replays no history of partitions that sent nothing.
    const liveEvents = readEvents(env, "/events/stream", 1);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const one = await submit(env, { video_id: "sse-live" });
    const [seen] = await liveEvents;
    assert.equal(seen.task_id, one);
    if (n > 1) assert.ok(!seen.id.split(",").includes("0-0"), `live positions: ${seen.id}`);
    const last = await submit(env, { video_id: "sse-last" });
    const [after] = await readEvents(env, "/events/stream", 1, seen.id);
    assert.equal(after.task_id, last, "resuming sends what came after, not history");
    // A task's own stream is its partition's.
    const [snapshot] = await readEvents(env, `/task/${more[0]}/stream`, 1);
    assert.equal(snapshot.event, "snapshot");
    assert.equal(snapshot.task_id, more[0]);
  });

  await step("retention trims every partition", async () => {
    await using env = await partitionedEnv("retention", options);
    const running = await runConsumers(env);
    try {
      const ids = await Promise.all(
        Array.from({ length: 12 }, (_, i) => submit(env, { video_id: `ret-${i}` })),
      );
      await settledAll(env, ids);
    } finally {
      await running.stop(2_000);
    }
    const { redis, partitions } = env.services;
    await new Promise((resolve) => setTimeout(resolve, 20));
    for (const p of partitions.list) {
      const had = await redis.xlen(p.keys.eventStream);
      const result = await applyRetention(redis, p.keys, 1, Date.now());
      assert.equal(result.events, had, `partition ${p.index} trimmed all ${had} events`);
      assert.equal(await redis.xlen(p.keys.eventStream), 0);
    }
  });
}

/** POST /admin/dead-letters/redrive?partition=N with all: true; the task ids redriven. */
async function redriveVia(env: TestEnv, partition: number): Promise<string[]> {
  const res = await env.services.app.request(`/admin/dead-letters/redrive?partition=${partition}`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: JSON.stringify({ all: true }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const { outcomes } = await res.json();
  return outcomes.filter((o: { skipped?: string }) => !o.skipped).map((o: { task_id: string }) =>
    o.task_id
  );
}

/** The first `count` events (with data) of an SSE route, read in-process; then it is cancelled. */
async function readEvents(
  env: TestEnv,
  path: string,
  count: number,
  lastEventId?: string,
): Promise<{ id: string; event: string; task_id: string }[]> {
  const res = await env.services.app.request(path, {
    headers: {
      authorization: `Bearer ${ADMIN}`,
      ...(lastEventId ? { "last-event-id": lastEventId } : {}),
    },
  });
  if (res.status !== 200) assert.fail(`${path}: ${res.status} ${await res.text()}`);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const events: { id: string; event: string; task_id: string }[] = [];
  let buffer = "";
  const deadline = Date.now() + 10_000;
  try {
    while (events.length < count) {
      if (Date.now() > deadline) throw new Error(`${events.length} of ${count} events in time`);
      const { done, value } = await Promise.race([
        reader.read(),
        new Promise<never>((_, reject) =>
          setTimeout(
            () => reject(new Error(`${path}: ${events.length} of ${count} events in time`)),
            Math.max(0, deadline - Date.now()),
          )
        ),
      ]);
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const field = (name: string) =>
          block.split("\n").find((l) => l.startsWith(`${name}: `))?.slice(name.length + 2);
        const data = field("data");
        if (!data) continue;
        const json = JSON.parse(data);
        events.push({
          id: field("id") ?? "",
          event: field("event") ?? "message",
          task_id: json.task_id,
        });
      }
    }
  } finally {
    await reader.cancel();
  }
  return events.slice(0, count);
}
