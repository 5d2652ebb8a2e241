/**
 * Dashboard: how fast the task index lists, filters and searches with many tasks in it (the
 * target: under 100 ms a page with 100,000 tasks). Generated events (queued with a prompt, then
 * started, completed or failed) are folded straight through the task index's and the task view's
 * plans under a prefix of their own, as a rebuild would; then each kind of page is asked for
 * repeatedly through `queryTaskIndex` (and the newest page through GET /tasks in-process), next
 * to a plain GET of one task view as the minimal read of the same run.
 */
import { loadConfig } from "../src/config.ts";
import type { StoredEvent } from "../src/events.ts";
import { createLogger } from "../src/log.ts";
import { applyWrites } from "../src/projections/definition.ts";
import { taskIndex } from "../src/projections/task_index/projection.ts";
import { queryTaskIndex, type TaskListQuery } from "../src/projections/task_index/query.ts";
import { taskIndexKeys } from "../src/projections/task_index/view.ts";
import { taskView } from "../src/projections/task_view/projection.ts";
import { taskViewKey } from "../src/projections/task_view/view.ts";
import { type RedisClient, waitReady } from "../src/redis/client.ts";
import { createServices } from "../src/runtime.ts";
import { type BenchContext, newPrefix } from "./context.ts";
import { round } from "./procs.ts";
import { REDIS_URL } from "./redis_tools.ts";

const WORDS = (
  "a an the of in on at with and slow fast wide close drone shot aerial tracking handheld " +
  "golden hour sunset sunrise night neon rain fog snow desert forest ocean waves beach city " +
  "street market rooftop skyline bridge river mountain valley canyon lake harbor train station " +
  "hero walks runs turns looks smiles towards away camera frame light shadow silhouette " +
  "cinematic moody warm cold vibrant muted pastel colour grade voiceover music upbeat calm " +
  "dramatic product logo reveal text overlay caption scene transition cut fade zoom pan tilt " +
  "dolly crane macro detail texture fabric coffee cup laptop phone screen hands typing office " +
  "studio kitchen chef plating food dish restaurant crowd festival dancer singer guitar drums"
).split(" ");

/** A deterministic generator (the same tasks every run). */
function random(seed: number) {
  let s = seed;
  return () => (s = (s * 48271) % 2_147_483_647) / 2_147_483_647;
}

export interface DashboardOptions {
  tasks: number;
  /** Pages asked for per kind of query. */
  repeats: number;
}

interface Generated {
  events: StoredEvent[];
  /** Spread over this many ms of creation time. */
  spanMs: number;
  t0: number;
  someTaskId: string;
}

/**
 * `n` tasks created over 7 days (event times): 20 % of videos' tasks share a video (5 a video),
 * 100 users, every second task with an idempotency key, prompts of 80–700 characters; about one
 * in a thousand prompts says "aurora borealis". 80 % complete, 10 % fail, 5 % are processing.
 */
function generate(n: number): Generated {
  const rnd = random(42);
  const spanMs = 7 * 86_400_000;
  const t0 = Date.UTC(2026, 0, 1);
  const events: StoredEvent[] = [];
  let seq = 0;
  const push = (task: string, type: string, ms: number, data: unknown) => {
    seq += 1;
    events.push(
      {
        id: `${t0 + seq}-0`,
        type,
        task_id: task,
        at: new Date(ms).toISOString(),
        data,
      } as StoredEvent,
    );
  };
  for (let i = 0; i < n; i++) {
    const task = `task-${String(i).padStart(6, "0")}-${Math.floor(rnd() * 1e9).toString(36)}`;
    const ms = t0 + Math.floor((i / n) * spanMs);
    const length = 80 + Math.floor(rnd() * 620);
    let prompt = `Scene 1: `;
    while (prompt.length < length) prompt += `${WORDS[Math.floor(rnd() * WORDS.length)]} `;
    if (i % 997 === 0) prompt += "under the aurora borealis";
    push(task, "task.queued", ms, {
      video_id: `video-${Math.floor(i / 5)}`,
      user_id: `user-${i % 100}`,
      is_revision: false,
      webhook_entry: `${t0 + seq}-1`,
      ...(i % 2 === 0 ? { idempotency_key: `idem-${i}` } : {}),
      prompt,
    });
    const fate = rnd();
    if (fate < 0.05) continue; // queued
    push(task, "task.started", ms + 100, { attempt: 1, worker: "w1" });
    if (fate < 0.1) continue; // processing
    if (fate < 0.2) {
      push(task, "task.failed", ms + 900, {
        error: "Provider down",
        retryable: false,
        attempt: 1,
        final: true,
      });
    } else {
      push(task, "task.completed", ms + 2_000, {
        video_id: `video-${Math.floor(i / 5)}`,
        result: {
          scenes: [],
          image_url: "https://example.com/i.png",
          reframed: true,
          provider: { reframe: "offline", scenes: "offline" },
          revision: false,
          video_revision: 1,
        },
        duration_ms: 1_900,
      });
    }
  }
  return { events, spanMs, t0, someTaskId: events[Math.floor(events.length / 2)].task_id };
}

/** Folds events through a projection's plan, in batches, as a rebuild does. */
async function fold(
  redis: RedisClient,
  projection: typeof taskIndex | typeof taskView,
  prefix: string,
  events: StoredEvent[],
  viewTtlS: number,
) {
  const handled = events.filter((e) => projection.handles.includes(e.type));
  for (let i = 0; i < handled.length; i += 5_000) {
    await applyWrites(
      redis,
      await projection.plan({ redis, prefix, viewTtlS }, handled.slice(i, i + 5_000)),
    );
  }
}

async function usedMemory(redis: RedisClient): Promise<number> {
  const info = await redis.info("memory");
  return Number(/used_memory:(\d+)/.exec(info)?.[1] ?? 0);
}

const percentile = (sorted: number[], q: number) =>
  sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];

export interface QueryPoint {
  name: string;
  query: string;
  p50_ms: number;
  p99_ms: number;
  /** Tasks on the page (the last one asked for). */
  items: number;
  /** Whether the page had a next_cursor. */
  more: boolean;
  /** p50 against a GET of one task view in the same run. */
  ratio: number;
}

export async function dashboardPhase(ctx: BenchContext, options: DashboardOptions) {
  const prefix = newPrefix(ctx, "dashboard");
  const config = loadConfig({ KEY_PREFIX: prefix, REDIS_URL, LOG_LEVEL: "warn" });
  const log = createLogger("warn", { service: "bench-dashboard" }, (line) => ctx.say(line));
  const services = createServices(config, log);
  try {
    const { redis, keys } = services;
    await waitReady(redis);
    const view = keys.views(0).prefix;
    const generated = generate(options.tasks);
    // Event times span 7 days: a retention of 30 days keeps every task.
    const ttl = config.VIEW_RETENTION_S;
    const before = await usedMemory(redis);
    let t = performance.now();
    await fold(redis, taskIndex, view, generated.events, ttl);
    const indexS = (performance.now() - t) / 1000;
    const indexBytes = (await usedMemory(redis)) - before;
    const ik = taskIndexKeys(view);
    const blocks = await redis.hkeys(ik.gramBlocks);
    const [allBytes, docsBytes, promptsBytes, positionsBytes, indexed, ...blockBytes] =
      await Promise
        .all([
          redis.memory("USAGE", ik.all),
          redis.memory("USAGE", ik.docs),
          redis.memory("USAGE", ik.prompts),
          redis.memory("USAGE", ik.positions),
          redis.zcard(ik.all),
          ...blocks.map((b) => redis.memory("USAGE", ik.grams(b))),
        ]);
    const gramsBytes = blockBytes.reduce((sum: number, b) => sum + Number(b ?? 0), 0);
    t = performance.now();
    await fold(redis, taskView, view, generated.events, ttl);
    const viewS = (performance.now() - t) / 1000;
    ctx.say(
      `  ${indexed} tasks indexed in ${round(indexS)} s (task views ${round(viewS)} s); index ` +
        `${round(indexBytes / 1e6)} MB (${Math.round(indexBytes / Math.max(1, indexed))} B a ` +
        `task): prompts ${round(Number(promptsBytes) / 1e6)} MB, trigram bitmaps ` +
        `${round(gramsBytes / 1e6)} MB in ${blocks.length} blocks, the all set ` +
        `${round(Number(allBytes) / 1e6)} MB`,
    );

    const time = async (work: () => Promise<unknown>) => {
      const samples: number[] = [];
      let last: unknown;
      for (let i = 0; i < options.repeats; i++) {
        const t0 = performance.now();
        last = await work();
        samples.push(performance.now() - t0);
      }
      samples.sort((a, b) => a - b);
      return { p50: percentile(samples, 0.5), p99: percentile(samples, 0.99), last };
    };
    const minimal = await time(() => redis.get(taskViewKey(view, generated.someTaskId)));
    ctx.say(`  GET of one task view (the minimal read): p50 ${round(minimal.p50, 2)} ms`);
    const points: QueryPoint[] = [];
    const measure = async (name: string, query: TaskListQuery) => {
      const r = await time(() => queryTaskIndex(redis, [view], query));
      const page = r.last as Awaited<ReturnType<typeof queryTaskIndex>>;
      const point: QueryPoint = {
        name,
        query: JSON.stringify(query),
        p50_ms: round(r.p50, 2),
        p99_ms: round(r.p99, 2),
        items: page.items.length,
        more: page.next_cursor !== null,
        ratio: round(r.p50 / Math.max(minimal.p50, 0.001), 1),
      };
      points.push(point);
      ctx.say(
        `  ${name}: p50 ${point.p50_ms} ms, p99 ${point.p99_ms} ms (${point.items} tasks${
          point.more ? ", more" : ""
        })`,
      );
      return page;
    };
    const mid = generated.t0 + Math.floor(generated.spanMs / 2);
    await measure("newest page", { limit: 25 });
    await measure("newest page of 100", { limit: 100 });
    await measure("status failed", { status: "failed" });
    await measure("status queued", { status: "queued" });
    await measure("time range (1 h)", { from: mid, to: mid + 3_600_000 });
    await measure("time range + status", { from: mid, to: mid + 86_400_000, status: "processing" });
    await measure("task id", { q: generated.someTaskId });
    await measure("video id", { q: "video-12345" });
    await measure("user id", { q: "user-42" });
    await measure("user id + status", { q: "user-42", status: "failed" });
    await measure("idempotency key", { q: "idem-5000" });
    await measure("prompt, common", { q: "golden hour" });
    await measure("prompt, rare (0.1 %)", { q: "aurora borealis" });
    await measure("prompt + status", { q: "drone shot", status: "failed" });
    await measure("prompt, miss", { q: "zebra crossing" });
    // Deep: a cursor 90 % down the list.
    const [deep] = await redis.zrange(ik.all, Math.floor(indexed * 0.9), Math.floor(indexed * 0.9));
    await measure("deep page (90 %)", { cursor: deep });

    // A whole search that finds nothing: pages until next_cursor is null.
    const exhaust = async (query: TaskListQuery) => {
      const t0 = performance.now();
      let pages = 0;
      let cursor: string | undefined;
      let found = 0;
      do {
        const page = await queryTaskIndex(redis, [view], { ...query, cursor });
        pages++;
        found += page.items.length;
        cursor = page.next_cursor ?? undefined;
      } while (cursor);
      return { pages, found, total_ms: round(performance.now() - t0, 1) };
    };
    const missWalk = await exhaust({ q: "zebra crossing", limit: 25 });
    const rareWalk = await exhaust({ q: "aurora borealis", limit: 100 });
    ctx.say(
      `  prompt miss over every task: ${missWalk.pages} pages, ${missWalk.total_ms} ms; ` +
        `rare prompt, all ${rareWalk.found} matches: ${rareWalk.pages} pages, ${rareWalk.total_ms} ms`,
    );

    // The same newest page through the HTTP route, in-process (Hono, validation, JSON).
    const http = await time(async () => {
      const res = await services.app.request("/tasks?limit=25");
      if (res.status !== 200) throw new Error(`GET /tasks answered ${res.status}`);
      return await res.json();
    });
    ctx.say(`  GET /tasks?limit=25: p50 ${round(http.p50, 2)} ms, p99 ${round(http.p99, 2)} ms`);
    return {
      tasks: indexed,
      repeats: options.repeats,
      fold_s: { index: round(indexS, 1), task_views: round(viewS, 1) },
      memory: {
        index_mb: round(indexBytes / 1e6, 1),
        bytes_per_task: Math.round(indexBytes / Math.max(1, indexed)),
        all_set_mb: round(Number(allBytes) / 1e6, 1),
        docs_mb: round(Number(docsBytes) / 1e6, 1),
        prompts_mb: round(Number(promptsBytes) / 1e6, 1),
        positions_mb: round(Number(positionsBytes) / 1e6, 1),
        trigram_bitmaps_mb: round(gramsBytes / 1e6, 1),
        trigram_blocks: blocks.length,
      },
      minimal_get_p50_ms: round(minimal.p50, 3),
      points,
      http_newest_page: { p50_ms: round(http.p50, 2), p99_ms: round(http.p99, 2) },
      prompt_miss_all_pages: missWalk,
      prompt_rare_all_pages: rareWalk,
      worst_p99_ms: Math.max(...points.map((p) => p.p99_ms)),
    };
  } finally {
    await services.close();
  }
}
