import assert from "node:assert/strict";
import type { RedisClient } from "../src/redis/client.ts";
import { dlqMain } from "../src/cli/dlq.ts";
import { replayMain } from "../src/cli/replay.ts";
import { runCli } from "../src/cli/_common.ts";
import { UnrecoverableError } from "../src/errors.ts";
import { type TaskView, taskViewKey } from "../src/projections/task_view/view.ts";
import { rebuildProjections, RebuildRefused } from "../src/projections/rebuild.ts";
import { groupInfo } from "../src/redis/streams.ts";
import { redrive } from "../src/replay/reprocess.ts";
import { applyRetention, startRetention, trimStream } from "../src/replay/retention.ts";
import { createPipeline } from "../src/runtime.ts";
import {
  caughtUp,
  fixture,
  freePort,
  readStream,
  runConsumers,
  type TestEnv,
  testEnv,
  waitFor,
} from "./_helpers.ts";

/** Runs a CLI main as `deno task` would, capturing its output and exit code. */
async function cli(
  main: typeof replayMain,
  usage: string,
  env: TestEnv | null,
  args: string[],
  extraEnv: Record<string, string> = {},
) {
  let out = "";
  const errors: string[] = [];
  const original = console.error;
  console.error = (text: string) => errors.push(text);
  try {
    const code = await runCli(
      usage,
      () =>
        main(args, { KEY_PREFIX: env?.prefix ?? "unused", ...extraEnv }, (t) => (out += t), false),
    );
    return { code, out, err: errors.join("\n") };
  } finally {
    console.error = original;
  }
}

async function view(env: TestEnv, taskId: string): Promise<TaskView> {
  return await (await env.services.app.request(`/task/${taskId}`)).json();
}

async function settled(env: TestEnv, taskId: string, run = 1) {
  const { redis, keys } = env.services;
  return await waitFor(async () => {
    const v = await view(env, taskId);
    const done = v.run === run && (v.status === "completed" || v.status === "failed");
    return done && await caughtUp(redis, [keys.webhookStream, keys.eventStream]) ? v : null;
  }, { what: `task ${taskId} run ${run} settled`, timeoutMs: 15_000 });
}

async function submit(env: TestEnv, patch: object = {}) {
  const res = await env.post({ ...JSON.parse(await fixture("minimal.json")), ...patch });
  assert.equal(res.status, 202);
  return (await res.json()).task_id as string;
}

/** Scenes fail for videos whose id starts with "broken-" while `broken.on` is true. */
function breakable(env: TestEnv) {
  const broken = { on: true };
  const pipeline = createPipeline(env.config, env.services).map((step) =>
    step.name !== "scenes" ? step : {
      name: step.name,
      run: (context: Parameters<typeof step.run>[0]) =>
        broken.on && context.request.video_id.startsWith("broken-")
          ? Promise.reject(new UnrecoverableError("Scene writer rejected the prompt"))
          : step.run(context),
    }
  );
  return { broken, pipeline };
}

Deno.test("reprocessing a failed task after its fault is fixed completes it as run 2", async () => {
  await using env = await testEnv("reprocess");
  const { broken, pipeline } = breakable(env);
  const running = await runConsumers(env, { pipeline });
  try {
    const failed = await submit(env, { video_id: "broken-1" });
    const ok = await submit(env, { video_id: "fine-1" });
    assert.equal((await settled(env, failed)).status, "failed");
    assert.equal((await settled(env, ok)).status, "completed");

    const dry = await cli(replayMain, "", env, ["--status", "failed", "--dry-run"]);
    assert.equal(dry.code, 0, dry.err);
    assert.match(dry.out, new RegExp(`would run 2 ${failed}`));
    assert.doesNotMatch(dry.out, new RegExp(ok));
    assert.match(dry.out, /Dry run: 1 task\(s\) would be reprocessed/);
    assert.equal((await view(env, failed)).run, 1, "a dry run changes nothing");

    broken.on = false;
    const real = await cli(replayMain, "", env, [
      "--status",
      "failed",
      "--reason",
      "scene writer fixed",
      "--by",
      "maya",
    ]);
    assert.equal(real.code, 0, real.err);
    const rerun = await settled(env, failed, 2);
    assert.equal(rerun.status, "completed");
    // Its run-1 dead letter is now stale: redriving it must not run the finished task again.
    const stale = await cli(dlqMain, "", env, ["redrive", "--all"]);
    assert.equal(stale.code, 0, stale.err);
    assert.match(stale.out, /stale: the task ran again after this dead letter/);
    assert.equal((await view(env, failed)).run, 2);
    assert.equal(rerun.run, 2);
    assert.equal(rerun.attempts, 1);
    const events = await env.services.store.timeline(failed);
    const request = events.find((e) => e.type === "task.reprocess_requested");
    assert.deepEqual(request?.data, {
      run: 2,
      requested_by: "maya",
      reason: "scene writer fixed",
      source: "replay",
      webhook_entry: (request?.data as { webhook_entry: string }).webhook_entry,
    });
    assert.match((request?.data as { webhook_entry: string }).webhook_entry, /^\d+-\d+$/);
    // Reprocessing the completed task again stores over its own revision: no new revision.
    const again = await cli(replayMain, "", env, ["--task", failed]);
    assert.equal(again.code, 0, again.err);
    const third = await settled(env, failed, 3);
    assert.equal(third.result?.video_revision, 1);
    const stats = await (await env.services.app.request("/stats")).json();
    assert.equal(stats.total_requests, 2);
    assert.equal(stats.completed_tasks, 2);
    assert.equal(stats.failed_tasks, 0);
  } finally {
    await running.stop(1_000);
  }
});

Deno.test("a dead letter deleted by two operators at once is deleted and recorded once", async () => {
  await using env = await testEnv("dlq-delete");
  const { pipeline } = breakable(env);
  const running = await runConsumers(env, { pipeline });
  try {
    const taskId = await submit(env, { video_id: "broken-3" });
    await settled(env, taskId);
    const [letter] = await readStream(env.services.redis, env.services.keys.deadLetterStream);
    const dry = await cli(dlqMain, "", env, ["delete", letter.id, "--dry-run"]);
    assert.equal(dry.code, 0, dry.err);
    assert.match(dry.out, new RegExp(`would delete ${letter.id}  ${taskId}`));
    assert.equal(await env.services.redis.xlen(env.services.keys.deadLetterStream), 1);
    const [a, b] = await Promise.all(
      ["maya", "omar"].map((by) =>
        cli(dlqMain, "", env, ["delete", letter.id, "--by", by, "--reason", "bad input"])
      ),
    );
    assert.equal(a.code + b.code, 0, a.err + b.err);
    assert.match(a.out + b.out, /Deleted 1 dead letter\(s\), 0 skipped/);
    // The second finds it gone: inside the script, or (when the first has finished) before it.
    assert.match(a.out + b.out, /already redriven or deleted|no such dead letter/);
    assert.equal(await env.services.redis.xlen(env.services.keys.deadLetterStream), 0);
    const events = await env.services.store.timeline(taskId);
    const deleted = events.filter((e) => e.type === "task.dead_letter_deleted");
    assert.equal(deleted.length, 1);
    assert.equal(deleted[0].data.dead_letter_entry, letter.id);
    assert.equal(deleted[0].data.reason, "bad input");
    const view = await waitFor(async () => {
      const v = await (await env.services.app.request(`/task/${taskId}`)).json();
      return v.event_count === events.length ? v : null;
    });
    assert.equal(view.status, "failed");
    assert.equal(view.dead_letter_entry, null, "nothing left to redrive");
    const usage = await cli(dlqMain, "", env, ["delete"]);
    assert.equal(usage.code, 2);
  } finally {
    await running.stop(1_000);
  }
});

Deno.test("a dead letter redriven by five operators at once runs once", async () => {
  await using env = await testEnv("redrive");
  const { broken, pipeline } = breakable(env);
  const running = await runConsumers(env, { pipeline });
  try {
    const taskId = await submit(env, { video_id: "broken-2" });
    await settled(env, taskId);
    const [letter] = await readStream(env.services.redis, env.services.keys.deadLetterStream);
    assert.equal(letter.task_id, taskId);
    broken.on = false;
    const operators = await Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        redrive(env.services.store, [letter.id], {
          requestedBy: `op${i}`,
          reason: "redrive",
          dryRun: false,
          now: new Date(),
        })),
    );
    const ran = operators.flat().filter((o) => !o.skipped);
    assert.equal(ran.length, 1, JSON.stringify(operators));
    const done = await settled(env, taskId, 2);
    assert.equal(done.status, "completed");
    const types = (await env.services.store.timeline(taskId)).map((e) => e.type);
    assert.equal(types.filter((t) => t === "task.reprocess_requested").length, 1);
    assert.equal(types.filter((t) => t === "task.completed").length, 1);
    assert.equal(await env.services.redis.xlen(env.services.keys.deadLetterStream), 0);
    const list = await cli(dlqMain, "", env, ["list"]);
    assert.match(list.out, /0 dead letter\(s\)/);
  } finally {
    await running.stop(1_000);
  }
});

Deno.test("trimming keeps every pending or unread entry, whatever its age", async () => {
  await using env = await testEnv("trim");
  const redis: RedisClient = env.services.redis;
  const stream = env.services.keys.eventStream;
  for (let i = 1; i <= 10; i++) await redis.xadd(stream, `${i * 1000}-0`, "n", String(i));
  await redis.xgroup("CREATE", stream, "fast", "0");
  await redis.xgroup("CREATE", stream, "slow", "0");
  // "fast" read everything and acknowledged all but entry 7; "slow" read up to entry 4.
  const all = await redis.xreadgroup("GROUP", "fast", "c", "COUNT", 10, "STREAMS", stream, ">");
  const ids = (all as [string, [string, string[]][]][])[0][1].map(([id]) => id);
  await redis.xack(stream, "fast", ...ids.filter((id) => id !== "7000-0"));
  await redis.xreadgroup("GROUP", "slow", "c", "COUNT", 4, "STREAMS", stream, ">");
  await redis.xack(stream, "slow", "1000-0", "2000-0", "3000-0", "4000-0");
  // Everything is "older than retention", yet only entries 1 to 4 may go.
  assert.equal(await trimStream(redis, stream, 1, 1_000_000), 4);
  const left = (await redis.xrange(stream, "-", "+")).map(([id]) => id);
  assert.deepEqual(left, ["5000-0", "6000-0", "7000-0", "8000-0", "9000-0", "10000-0"]);
  // Once "slow" catches up, the pending entry 7 still stays.
  await redis.xreadgroup("GROUP", "slow", "c", "COUNT", 10, "STREAMS", stream, ">");
  await redis.xack(stream, "slow", ...left);
  await trimStream(redis, stream, 1, 1_000_000);
  assert.equal((await redis.xrange(stream, "-", "+"))[0][0], "7000-0");
  // And recent entries are kept by age alone.
  await redis.xack(stream, "fast", "7000-0");
  await trimStream(redis, stream, 2_500, 10_000);
  assert.deepEqual((await redis.xrange(stream, "-", "+")).map(([id]) => id), [
    "8000-0",
    "9000-0",
    "10000-0",
  ]);
});

Deno.test("a deployment without callbacks lets retention trim the event stream", async () => {
  await using env = await testEnv("trim-unrun", { HEALTH_MAX_CONSUMERLESS_S: "1" });
  const { redis, keys } = env.services;
  // Every process creates every group, so "callbacks" exists; no process runs it.
  const consumers = await runConsumers(env, { run: ["tasks", "scenes", "projections"] });
  try {
    for (let i = 0; i < 3; i++) await submit(env);
    const run = ["workers", "scene-sink", "task-view", "video-scenes", "stats"];
    await waitFor(async () => {
      const events = await readStream(redis, keys.eventStream);
      return events.filter((e) => e.type === "task.completed").length === 3 &&
        await caughtUp(redis, [keys.webhookStream, keys.eventStream], run);
    }, { what: "three tasks completed and projected" });
    const groups = await groupInfo(redis, keys.eventStream);
    assert.ok((groups.find((g) => g.name === "callbacks")?.lag ?? 0) > 0, "callbacks is behind");
    const length = await redis.xlen(keys.eventStream);

    // Within the bound it still holds the stream back.
    const optional = [{ kind: "callbacks", group: "callbacks" }];
    const early = await applyRetention(redis, keys, 1, Date.now(), {
      abandonAfterMs: 60_000,
      optional,
    });
    assert.equal(early.events, 0);
    assert.deepEqual(early.abandoned, []);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    // Past it, retention goes on without it (the running groups have read everything).
    const result = await applyRetention(redis, keys, 1, Date.now(), {
      abandonAfterMs: env.config.HEALTH_MAX_CONSUMERLESS_S * 1000,
      optional,
    });
    assert.deepEqual(result.abandoned, ["callbacks"]);
    assert.equal(result.events, length);
    assert.equal(await redis.xlen(keys.eventStream), 0);
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("only an optional group nobody runs stops holding the stream back; any other holds it for good", async () => {
  await using env = await testEnv("trim-live");
  const redis: RedisClient = env.services.redis;
  const stream = env.services.keys.eventStream;
  for (let i = 1; i <= 6; i++) await redis.xadd(stream, `${i * 1000}-0`, "n", String(i));
  await redis.xgroup("CREATE", stream, "done", "$");
  await redis.xgroup("CREATE", stream, "slow", "0");
  await redis.xreadgroup("GROUP", "slow", "c", "COUNT", 2, "STREAMS", stream, ">");
  await redis.xack(stream, "slow", "1000-0");
  // "slow" has entry 2 pending and 3 to 6 unread, all long ago (its consumers are down, say).
  const rule = (abandonable: string[]) => ({
    abandonable: new Set(abandonable),
    afterMs: 10_000,
    nowMs: 1_000_000,
  });
  const abandoned: string[] = [];
  assert.equal(await trimStream(redis, stream, 1, 1_000_000, { abandon: rule([]) }), 1);
  assert.equal((await redis.xrange(stream, "-", "+"))[0][0], "2000-0");
  // Only the group of an optional kind nobody runs is let go of.
  await trimStream(redis, stream, 1, 1_000_000, { abandon: rule(["slow"]), abandoned });
  assert.deepEqual(abandoned, ["slow"]);
  assert.equal(await redis.xlen(stream), 0);
});

Deno.test("retention runs every round it is due, from one process at a time", async () => {
  await using env = await testEnv("rounds");
  const { redis, keys } = env.services;
  const rounds: number[] = [];
  const intervalMs = 300;
  const stops = ["a", "b", "c"].map((owner) =>
    startRetention({
      redis,
      keys,
      retentionMs: 60_000,
      intervalMs,
      owner,
      onError: (error) => {
        throw error;
      },
      onRound: () => rounds.push(performance.now()),
    })
  );
  const t0 = performance.now();
  await new Promise((resolve) => setTimeout(resolve, 3_050));
  for (const stop of stops) stop();
  const elapsed = performance.now() - t0;
  const due = Math.floor(elapsed / intervalMs);
  // The first round comes a look after the start; then one per interval, none skipped.
  assert.ok(rounds.length >= due - 1 && rounds.length <= due, `${rounds.length} of ${due} rounds`);
  for (let i = 1; i < rounds.length; i++) {
    const gap = rounds[i] - rounds[i - 1];
    // Measured when rounds end, so a slow round shortens the gap after it: far from twice the
    // interval (a skipped round) and from none at all (two processes in one round).
    assert.ok(gap > intervalMs * 0.5 && gap < intervalMs * 1.6, `gap ${Math.round(gap)} ms`);
  }
});

Deno.test("replay CLI: argument errors, help, and an unreachable Redis", async () => {
  const cases: [string[], RegExp][] = [
    [[], /Nothing to do/],
    [["--status", "weird"], /--status must be one of/],
    [["--since", "yesterday"], /--since must be an ISO-8601/],
    [["--since", "2026-11-28", "--until", "2026-11-01"], /--since must not be after --until/],
    [["--task", "a", "--since", "2026-11-01"], /either --task or --since/],
    [["--bogus"], /Unknown option '--bogus'/],
  ];
  for (const [args, message] of cases) {
    const result = await cli(replayMain, "USAGE", null, args);
    assert.equal(result.code, 2, args.join(" "));
    assert.match(result.err, message);
    assert.match(result.err, /USAGE/);
  }
  const help = await cli(replayMain, "", null, ["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.out, /--projections/);
  const down = await cli(replayMain, "", null, ["--projections"], {
    REDIS_URL: `redis://127.0.0.1:${freePort()}`,
  });
  assert.equal(down.code, 1);
  assert.match(down.err, /Redis is unreachable/);
  const dlqBad = await cli(dlqMain, "", null, ["redrive"]);
  assert.equal(dlqBad.code, 2);
  assert.match(dlqBad.err, /redrive takes dead-letter ids or --all/);
});

/** View keys and values of one generation, with the generation removed from the key names. */
async function views(env: TestEnv, generation: number) {
  const { redis, keys } = env.services;
  const pattern = keys.views(generation).viewPattern;
  const prefix = pattern.slice(0, -1);
  const found: string[] = [];
  let cursor = "0";
  do {
    const [next, batch] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
    cursor = next;
    found.push(...batch);
  } while (cursor !== "0");
  const out: Record<string, unknown> = {};
  for (const key of found.sort()) {
    const type = await redis.type(key);
    const name = key.slice(prefix.length);
    if (type === "string") out[name] = await redis.get(key);
    else if (type === "hash") out[name] = await redis.hgetall(key);
    else out[name] = await redis.zrange(key, 0, -1, "WITHSCORES");
  }
  return out;
}

Deno.test("--projections rebuilds identical views while webhooks keep arriving, then swaps", async () => {
  await using env = await testEnv("rebuild-live", { ADMIN_TOKEN: "admin-token-0123456789" });
  const { broken, pipeline } = breakable(env);
  const running = await runConsumers(env, { pipeline });
  try {
    for (let i = 0; i < 20; i++) await submit(env, { video_id: i % 5 ? `v-${i}` : `broken-${i}` });
    await waitFor(async () =>
      (await (await env.services.app.request("/stats")).json()).completed_tasks === 16
    );
    await waitFor(() => caughtUp(env.services.redis, [env.services.keys.eventStream]));
    const before = await views(env, 0);
    const idle = await cli(replayMain, "", env, ["--projections"]);
    assert.equal(idle.code, 0, idle.err);
    assert.match(idle.out, /Rebuilt views generation 1 from \d+ events/);
    assert.deepEqual(await views(env, 1), before, "a rebuild equals the live views");
    assert.deepEqual(await views(env, 0), {}, "the old generation is gone");

    // Rebuild again while new webhooks are accepted and processed.
    broken.on = false;
    const arriving = (async () => {
      for (let i = 0; i < 30; i++) await submit(env, { video_id: `late-${i}` });
    })();
    const admin = await env.services.app.request("/admin/replay", {
      method: "POST",
      headers: {
        authorization: "Bearer admin-token-0123456789",
        "content-type": "application/json",
      },
      body: JSON.stringify({ projections: true }),
    });
    assert.equal(admin.status, 200);
    assert.equal((await admin.json()).projections.generation, 2);
    await arriving;
    await waitFor(
      async () => (await (await env.services.app.request("/stats")).json()).completed_tasks === 46,
      {
        what: "late tasks projected by the workers that followed generation 2",
      },
    );
    await waitFor(() => caughtUp(env.services.redis, [env.services.keys.eventStream]));
    const live = await views(env, 2);
    // A quiet third rebuild folds the same log to the same views: nothing was lost in the swap.
    const quiet = await cli(replayMain, "", env, ["--projections"]);
    assert.equal(quiet.code, 0, quiet.err);
    assert.deepEqual(await views(env, 3), live);
    // The bulk fold in reads of 3 entries: batch boundaries change nothing.
    const small = await rebuildProjections({
      redis: env.services.redis,
      redisTarget: env.config.REDIS_URL,
      keys: env.services.keys,
      log: env.log,
      viewTtlS: env.config.VIEW_RETENTION_S,
      owner: "test",
      bulkBatch: 3,
    });
    assert.equal(small.generation, 4);
    assert.deepEqual(await views(env, 4), live);
  } finally {
    await running.stop(1_000);
  }
});

Deno.test("admin API: disabled without a token, 401 with a wrong one, dead letters by HTTP", async () => {
  await using closed = await testEnv("admin-off");
  const off = await closed.services.app.request("/admin/dead-letters");
  assert.equal(off.status, 404);
  await off.body?.cancel();

  await using env = await testEnv("admin", { ADMIN_TOKEN: "admin-token-0123456789" });
  const call = (path: string, init: RequestInit = {}, token = "admin-token-0123456789") =>
    env.services.app.request(path, {
      ...init,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    });
  const wrong = await call("/admin/dead-letters", {}, "admin-token-0123456788");
  assert.equal(wrong.status, 401);
  await wrong.body?.cancel();
  const badCursor = await call("/admin/dead-letters?after=zzz");
  assert.equal(badCursor.status, 400);
  assert.match((await badCursor.json()).detail, /"after"/);
  const { broken, pipeline } = breakable(env);
  const running = await runConsumers(env, { pipeline });
  try {
    const taskId = await submit(env, { video_id: "broken-http" });
    await settled(env, taskId);
    const list = await (await call("/admin/dead-letters")).json();
    assert.equal(list.dead_letters.length, 1);
    const id = list.dead_letters[0].id;
    const one = await (await call(`/admin/dead-letters/${id}`)).json();
    assert.equal(one.task_id, taskId);
    const invalid = await call("/admin/dead-letters/redrive", { method: "POST", body: "{}" });
    assert.equal(invalid.status, 400);
    await invalid.body?.cancel();
    broken.on = false;
    const redriven = await (await call("/admin/dead-letters/redrive", {
      method: "POST",
      body: JSON.stringify({ ids: [id] }),
    })).json();
    assert.equal(redriven.outcomes[0].run, 2);
    assert.equal((await settled(env, taskId, 2)).status, "completed");
  } finally {
    await running.stop(1_000);
  }
});

Deno.test("a rebuild over a trimmed log is refused unless forced", async () => {
  await using env = await testEnv("rebuild-trimmed", { ADMIN_TOKEN: "admin-token-0123456789" });
  const { redis, keys } = env.services;
  for (let i = 0; i < 3; i++) await submit(env, { video_id: `t-${i}` });
  await redis.xtrim(keys.eventStream, "MAXLEN", 2);
  const refused = await cli(replayMain, "", env, ["--projections"]);
  assert.equal(refused.code, 1);
  assert.match(refused.err, /Retention has trimmed the event log \(2 of 3 events remain\)/);
  const admin = (force: boolean) =>
    env.services.app.request("/admin/replay", {
      method: "POST",
      headers: {
        authorization: "Bearer admin-token-0123456789",
        "content-type": "application/json",
      },
      body: JSON.stringify({ projections: true, force }),
    });
  const conflict = await admin(false);
  assert.equal(conflict.status, 409);
  assert.match((await conflict.json()).detail, /--force/);
  assert.equal(await redis.get(keys.viewGeneration), null, "nothing was swapped");
  const forced = await cli(replayMain, "", env, ["--projections", "--force"]);
  assert.equal(forced.code, 0, forced.err);
  assert.match(forced.out, /Rebuilt views generation 1 from 2 events/);
});

Deno.test("an interrupted rebuild drops its half-built generation and its lock", async () => {
  await using env = await testEnv("rebuild-abort");
  const { redis, keys } = env.services;
  for (let i = 0; i < 3; i++) await submit(env, { video_id: `a-${i}` });
  const options = {
    redis,
    redisTarget: env.config.REDIS_URL,
    keys,
    log: env.log,
    viewTtlS: 60,
    owner: "test",
  };
  await assert.rejects(
    rebuildProjections({ ...options, signal: AbortSignal.abort(new Error("stop")) }),
    /stop/,
  );
  const groups = (await groupInfo(redis, keys.eventStream)).map((g) => g.name);
  assert.deepEqual(groups.filter((name) => name.includes("@")), [], groups.join(", "));
  assert.equal(await redis.exists(keys.rebuildLock), 0);
  assert.deepEqual(await redis.keys(keys.views(1).viewPattern), []);
  assert.equal(await redis.get(keys.viewGeneration), null);
  // A lock held by someone else is left alone, and refuses this rebuild.
  await redis.set(keys.rebuildLock, "other", "PX", 60_000);
  await assert.rejects(rebuildProjections(options), RebuildRefused);
  assert.equal(await redis.get(keys.rebuildLock), "other");
  await redis.del(keys.rebuildLock);
  assert.equal((await rebuildProjections(options)).generation, 1);
});

Deno.test("a rebuild skips malformed events, even a batch of nothing else", async () => {
  await using env = await testEnv("rebuild-malformed");
  const { redis, keys } = env.services;
  const ids = [await submit(env, { video_id: "m-1" }), await submit(env, { video_id: "m-2" })];
  await redis.xadd(keys.eventStream, "*", "type", "task.queued", "task_id", "bad", "data", "{");
  const result = await rebuildProjections({
    redis,
    redisTarget: env.config.REDIS_URL,
    keys,
    log: env.log,
    viewTtlS: 60,
    owner: "test",
    bulkBatch: 1,
  });
  assert.equal(result.generation, 1);
  for (const id of ids) assert.equal(await redis.exists(taskViewKey(keys.views(1).prefix, id)), 1);
  assert.equal(await redis.exists(taskViewKey(keys.views(1).prefix, "bad")), 0);
});
