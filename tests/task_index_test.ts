import assert from "node:assert/strict";
import type { EventOf, StoredEvent, TaskEventType } from "../src/events.ts";
import { fold } from "../src/projections/definition.ts";
import { taskIndex } from "../src/projections/task_index/projection.ts";
import { merge, queryTaskIndex, type TaskListQuery } from "../src/projections/task_index/query.ts";
import {
  evolveTaskIndex,
  GRAM_BLOCK,
  indexContents,
  initialTaskIndex,
  taskIndexKeys,
  type TaskIndexState,
} from "../src/projections/task_index/view.ts";
import { fixture, runConsumers, testEnv, waitFor } from "./_helpers.ts";
import { expectedIndex, projectIndex, storedIndex } from "./_task_index.ts";

const T0 = Date.UTC(2026, 0, 1);
let seq = 0;
/** A stored event of `task` at `ms` (event time), with the next entry id. */
function on<T extends TaskEventType>(
  task: string,
  type: T,
  ms: number,
  data: EventOf<T>["data"],
): StoredEvent {
  seq += 1;
  return {
    id: `${T0 + seq}-0`,
    type,
    task_id: task,
    at: new Date(ms).toISOString(),
    data,
  } as StoredEvent;
}

const queued = (
  task: string,
  ms: number,
  { video = "v1", user = "u1", key, prompt }: {
    video?: string;
    user?: string;
    key?: string;
    prompt?: string;
  } = {},
) =>
  on(task, "task.queued", ms, {
    video_id: video,
    user_id: user,
    is_revision: false,
    webhook_entry: "1-0",
    ...(key ? { idempotency_key: key } : {}),
    ...(prompt !== undefined ? { prompt } : {}),
  });
const started = (task: string, ms: number) =>
  on(task, "task.started", ms, { attempt: 1, worker: "w" });
const failed = (task: string, ms: number, final = true) =>
  on(task, "task.failed", ms, { error: "x", retryable: !final, attempt: 1, final });
const reprocessed = (task: string, ms: number) =>
  on(task, "task.reprocess_requested", ms, {
    run: 2,
    requested_by: "maya",
    reason: "outage",
    source: "replay",
  });

Deno.test("the index follows the task's status and keeps its search keys", () => {
  const events = [
    queued("a", T0, { video: "v1", user: "u1", key: "k1", prompt: "A  Golden\nHour shot" }),
    queued("b", T0 + 1_000, { video: "v2", user: "u1" }),
    started("a", T0 + 2_000),
    failed("a", T0 + 3_000, false),
    failed("a", T0 + 4_000),
    reprocessed("a", T0 + 5_000),
  ];
  const state = fold(taskIndex, events);
  assert.equal(state.tasks.a.status, "queued", "reprocess moves it back to queued");
  assert.equal(state.tasks.a.prompt, "a golden hour shot");
  assert.equal(state.tasks.b.prompt, null);
  const contents = indexContents(state, "{p}:view");
  assert.deepEqual(contents.sets["{p}:view:task-index:status:queued"], [
    `${String(T0).padStart(13, "0")}:a`,
    `${String(T0 + 1000).padStart(13, "0")}:b`,
  ]);
  assert.deepEqual(contents.sets["{p}:view:task-index:idem:k1"], [
    `${String(T0).padStart(13, "0")}:a`,
  ]);
  assert.equal(contents.sets["{p}:view:task-index:status:failed"], undefined);
});

Deno.test("projected index equals the pure fold, whatever the batches", async () => {
  await using env = await testEnv("task-index-fold");
  const { redis, keys } = env.services;
  const retentionS = 3_600;
  const events: StoredEvent[] = [];
  for (let i = 0; i < 300; i++) {
    const ms = T0 + i * 30_000; // 2.5 hours in all: the first 1.5 h are trimmed
    const task = `t${i}`;
    events.push(queued(task, ms, {
      video: `v${i % 7}`,
      user: `u${i % 3}`,
      key: i % 5 === 0 ? `k${i}` : undefined,
      prompt: `Scene ${i}: a drone shot`,
    }));
    if (i % 2 === 0) events.push(started(task, ms + 500));
    if (i % 4 === 0) events.push(failed(task, ms + 900));
    if (i % 8 === 0) events.push(reprocessed(task, ms + 1_500));
  }
  // Late events of a trimmed task do not bring it back.
  events.push(started("t0", T0 + 300 * 30_000));
  const expected = events.reduce(evolveTaskIndex, initialTaskIndex(retentionS) as TaskIndexState);
  assert.ok(Object.keys(expected.tasks).length < 300 && Object.keys(expected.tasks).length > 100);
  for (const [generation, size] of [[1, 1], [2, 13], [3, 1000]]) {
    const prefix = keys.views(generation).prefix;
    await projectIndex(redis, prefix, events, { size, viewTtlS: retentionS });
    assert.deepEqual(
      await storedIndex(redis, prefix),
      expectedIndex(indexContents(expected, prefix)),
      `batches of ${size}`,
    );
  }
});

Deno.test("pages: newest first, no task twice while tasks arrive, every filter", async () => {
  await using env = await testEnv("task-index-pages");
  const { redis, keys } = env.services;
  const prefix = keys.views(0).prefix;
  const events: StoredEvent[] = [];
  for (let i = 0; i < 120; i++) {
    events.push(queued(`t${i}`, T0 + i * 1_000, {
      video: `v${i % 4}`,
      user: `u${i % 3}`,
      prompt: i % 10 === 0 ? `Golden Hour ${i}` : `night ${i}`,
    }));
    if (i % 2 === 0) events.push(started(`t${i}`, T0 + i * 1_000 + 10));
  }
  await projectIndex(redis, prefix, events, { size: 50 });
  const list = (query: TaskListQuery) => queryTaskIndex(redis, [prefix], query);

  // Pages of 25 while new tasks arrive between pages: each task once, newest first.
  const seen: string[] = [];
  let cursor: string | undefined;
  let extra = 0;
  do {
    const page = await list({ limit: 25, cursor });
    seen.push(...page.items.map((t) => t.task_id));
    cursor = page.next_cursor ?? undefined;
    await projectIndex(redis, prefix, [
      queued(`new${extra}`, T0 + 200_000 + extra++ * 1000, { video: "vnew" }),
    ]);
  } while (cursor);
  assert.equal(seen.length, 120);
  assert.equal(new Set(seen).size, 120);
  assert.deepEqual(seen, Array.from({ length: 120 }, (_, i) => `t${119 - i}`));

  const processing = await list({ status: "processing", limit: 100 });
  assert.equal(processing.items.length, 60);
  assert.ok(processing.items.every((t) => t.status === "processing"));
  const range = await list({ from: T0 + 10_000, to: T0 + 20_000, limit: 100 });
  assert.deepEqual(
    range.items.map((t) => t.task_id),
    Array.from({ length: 10 }, (_, i) => `t${19 - i}`),
  );
  const video = await list({ q: "v1", limit: 100 });
  assert.equal(video.items.length, 30);
  assert.deepEqual(video.matched, ["video_id"]);
  const prompt = await list({ q: "GOLDEN hour", limit: 5 });
  assert.deepEqual(prompt.matched, ["prompt"]);
  assert.deepEqual(prompt.items.map((t) => t.task_id), ["t110", "t100", "t90", "t80", "t70"]);
  assert.ok(prompt.next_cursor);
  const miss = await list({ q: "no such words" });
  assert.deepEqual([miss.items.length, miss.next_cursor], [0, null]);
  const byId = await list({ q: "t42" });
  assert.deepEqual(byId.items.map((t) => t.task_id), ["t42"]);
  assert.deepEqual(byId.matched, ["task_id"]);
});

Deno.test("prompt search finds exactly the tasks whose prompt holds the text, page by page", async () => {
  await using env = await testEnv("task-index-prompts");
  const { redis, keys } = env.services;
  const prefix = keys.views(0).prefix;
  const words = "drone shot golden hour neon rain city street ocean waves hero walks slow zoom"
    .split(" ");
  let seed = 7;
  const rnd = () => (seed = (seed * 48271) % 2_147_483_647) / 2_147_483_647;
  const events: StoredEvent[] = [];
  const prompts: Record<string, string> = {};
  for (let i = 0; i < 400; i++) {
    const n = 2 + Math.floor(rnd() * 12);
    const prompt = Array.from({ length: n }, () => words[Math.floor(rnd() * words.length)])
      .join(i % 3 ? " " : "  ") + (i % 50 === 0 ? " Ünïcode ✓" : "");
    prompts[`t${i}`] = prompt;
    events.push(queued(`t${i}`, T0 + i * 1_000, { prompt }));
    if (i % 3 === 0) events.push(started(`t${i}`, T0 + i * 1_000 + 1));
  }
  await projectIndex(redis, prefix, events, { size: 64 });
  const state = fold(taskIndex, events);
  const needles = [
    "golden hour",
    "hour neon",
    "GOLDEN  HOUR",
    "ves he",
    "ünïcode ✓",
    "zebra",
    "slow slow slow",
    "ro", // shorter than a trigram: walks the set
    "o",
  ];
  for (const needle of needles) {
    for (const status of [undefined, "processing" as const]) {
      const want = Object.entries(state.tasks)
        .filter(([, t]) => t.prompt!.includes(needle.toLowerCase().replace(/\s+/g, " ")))
        .filter(([, t]) => status === undefined || t.status === status)
        .map(([, t]) => t.member).sort().reverse().map((m) => m.slice(14));
      const got: string[] = [];
      let cursor: string | undefined;
      do {
        const page = await queryTaskIndex(redis, [prefix], {
          q: needle,
          field: "prompt",
          status,
          limit: 7,
          cursor,
        });
        assert.deepEqual(page.matched, ["prompt"]);
        got.push(...page.items.map((t) => t.task_id));
        cursor = page.next_cursor ?? undefined;
      } while (cursor);
      assert.deepEqual(got, want, `${needle} (${status ?? "any status"})`);
    }
  }
  assert.ok(Object.keys(prompts).length === 400);
});

Deno.test("a trigram block goes when retention has trimmed its last task", async () => {
  await using env = await testEnv("task-index-blocks");
  const { redis, keys } = env.services;
  const prefix = keys.views(0).prefix;
  // One task a second, a retention of 1,000 s: block 0 (positions up to GRAM_BLOCK - 1) is empty
  // 1,000 tasks after its last one.
  const n = GRAM_BLOCK + 1_200;
  const events = Array.from(
    { length: n },
    (_, i) => queued(`t${i}`, T0 + i * 1_000, { prompt: `take ${i % 97}` }),
  );
  const retentionS = 1_000;
  await projectIndex(redis, prefix, events, { size: 500, viewTtlS: retentionS });
  const expected = events.reduce(evolveTaskIndex, initialTaskIndex(retentionS));
  const want = expectedIndex(indexContents(expected, prefix));
  assert.deepEqual(Object.keys(want.blocks), ["1"]);
  assert.deepEqual(await storedIndex(redis, prefix), want);
  const index = taskIndexKeys(prefix);
  assert.equal(await redis.exists(index.grams(0)), 0, "block 0's bitmap is deleted");
  const page = await queryTaskIndex(redis, [prefix], { q: "take 5", field: "prompt", limit: 100 });
  assert.deepEqual(
    page.items.map((t) => t.task_id),
    Object.values(expected.tasks).filter((t) => t.prompt!.includes("take 5"))
      .map((t) => t.member).sort().reverse().slice(0, 100).map((m) => m.slice(14)),
  );
});

Deno.test("GET /tasks finds a posted task by its ids and its prompt; bad parameters answer 400", async () => {
  await using env = await testEnv("task-index-http");
  const consumers = await runConsumers(env);
  try {
    const body = JSON.parse(await fixture("minimal.json"));
    const posted = await env.post({ ...body, idempotency_key: "idem-http-1" });
    assert.equal(posted.status, 202);
    const { task_id } = await posted.json();
    const get = async (query: string) => {
      const res = await env.services.app.request(`/tasks?${query}`);
      return { status: res.status, body: await res.json() };
    };
    await waitFor(async () => (await get("status=completed")).body.items?.length === 1, {
      what: "the task to be indexed as completed",
    });
    for (
      const [query, matched] of [
        [`q=${task_id}`, ["task_id"]],
        [`q=${body.video_id}`, ["video_id"]],
        [`q=${body.user_id}`, ["user_id"]],
        ["q=idem-http-1", ["idempotency_key"]],
        ["q=Pour-Over%20COFFEE", ["prompt"]],
      ] as const
    ) {
      const { status, body: page } = await get(query);
      assert.equal(status, 200, query);
      assert.deepEqual(page.items.map((t: { task_id: string }) => t.task_id), [task_id], query);
      assert.deepEqual(page.matched, matched, query);
      assert.equal(page.items[0].status, "completed");
    }
    assert.deepEqual((await get("q=espresso")).body.items, []);
    const bad = await get("limit=0&status=done&cursor=nope&from=yesterday");
    assert.equal(bad.status, 400);
    assert.deepEqual(
      bad.body.errors.map((e: { field: string }) => e.field).sort(),
      ["cursor", "from", "limit", "status"],
    );
  } finally {
    await consumers.stop(1_000);
  }
});

Deno.test("several partitions page as one list, newest first, each task once", async () => {
  await using env = await testEnv("task-index-partitions");
  const { redis, keys } = env.services;
  // Three key spaces (as partitions would have), tasks dealt among them unevenly.
  const prefixes = [keys.views(1).prefix, keys.views(2).prefix, keys.views(3).prefix];
  const all: StoredEvent[][] = [[], [], []];
  for (let i = 0; i < 90; i++) {
    const part = i % 7 === 0 ? 2 : i % 2;
    all[part].push(queued(`p${i}`, T0 + i * 1_000, {
      video: `v${i % 5}`,
      prompt: i % 4 === 0 ? `sunset ${i}` : `night ${i}`,
    }));
    if (i % 3 === 0) all[part].push(started(`p${i}`, T0 + i * 1_000 + 1));
  }
  for (const [i, prefix] of prefixes.entries()) await projectIndex(redis, prefix, all[i]);
  const pages = async (query: TaskListQuery) => {
    const ids: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await queryTaskIndex(redis, prefixes, { ...query, cursor, limit: 8 });
      ids.push(...page.items.map((t) => t.task_id));
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
    return ids;
  };
  const newestFirst = (keep: (i: number) => boolean) =>
    Array.from({ length: 90 }, (_, i) => 89 - i).filter(keep).map((i) => `p${i}`);
  assert.deepEqual(await pages({}), newestFirst(() => true));
  assert.deepEqual(await pages({ status: "processing" }), newestFirst((i) => i % 3 === 0));
  assert.deepEqual(await pages({ q: "v2" }), newestFirst((i) => i % 5 === 2));
  assert.deepEqual(await pages({ q: "sunset" }), newestFirst((i) => i % 4 === 0));
  assert.deepEqual(await pages({ q: "p14" }), ["p14"]);
});

Deno.test("merging walks: nothing below where a walk stopped early, which becomes the cursor", () => {
  const m = (n: number) => `${String(T0 + n).padStart(13, "0")}:t${n}`;
  // Walk A found 9, 7, 3; walk B ran out of budget after looking down to 6 and found 8.
  const walks = [{ members: [m(9), m(7), m(3)], stop: null }, { members: [m(8)], stop: m(6) }];
  assert.deepEqual(merge(walks, 5), { members: [m(9), m(8), m(7)], next: m(6) });
  // A full page ends at its last member, whoever stopped below it.
  assert.deepEqual(merge(walks, 2), { members: [m(9), m(8)], next: m(8) });
  // Every walk ended: no cursor once the page is not full.
  assert.deepEqual(merge([{ members: [m(2), m(1)], stop: null }], 5), {
    members: [m(2), m(1)],
    next: null,
  });
  // Walks ask for limit + 1: one more than the page means another page.
  assert.deepEqual(merge([{ members: [m(3), m(2), m(1)], stop: null }], 2), {
    members: [m(3), m(2)],
    next: m(2),
  });
  assert.deepEqual(merge([{ members: [m(3), m(2)], stop: null }], 2), {
    members: [m(3), m(2)],
    next: null,
  });
});
