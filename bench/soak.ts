/**
 * Soak: a server and one worker under a steady rate for a bounded time, with short retention
 * (STREAM_RETENTION_S, VIEW_RETENTION_S and IDEMPOTENCY_TTL_S all set to `retentionS`), sampling
 * Redis memory and both processes' RSS. Reports each one's slope in MB/min once retention has
 * trimmed: every key the service writes must then stay bounded, so Redis memory stays flat.
 *
 * The streams are trimmed in retention rounds (a minute apart, or more when a round is skipped),
 * so they saw up and down by the whole retention's worth of entries; a line fitted through a
 * sawtooth over a few teeth says more about the saw's phase than about growth. So:
 *
 * - the keys other than the streams (views, timelines, idempotency keys, stats…: everything
 *   bounded by a TTL or a fixed size) expire continuously: their slope is a least-squares fit
 *   over the steady part, and it is the figure the target is judged on;
 * - the streams are bounded by construction (retention trims them by age); the soak reports, per
 *   trimming cycle (from one drop of the event stream's length to the next), the most entries
 *   and the most MB they held, and the same peak for Redis's used_memory (the shared server's,
 *   so other clients' keys count there too);
 * - process RSS saws with garbage collection: the slope is fitted through each minute's minimum.
 */
import { createKeys } from "../src/keys.ts";
import { statsKeys } from "../src/projections/stats/view.ts";
import { type BenchContext, logPath, newPrefix, serviceEnv } from "./context.ts";
import { bodyTemplate, postTasks } from "./load.ts";
import { type Child, freePort, memoryOf, round, waitHttp, waitLog } from "./procs.ts";
import { deletePrefix } from "./redis_tools.ts";

export interface SoakOptions {
  soakSeconds: number;
  soakRate: number;
  soakRetentionS: number;
}

/** The retention round of the worker (consumers/kinds.ts): the period of the streams' sawtooth. */
const ROUND_S = 60;

interface Sample {
  t: number;
  redis_used_mb: number;
  /** MEMORY USAGE summed over the bench prefix's keys: this service's share of Redis. */
  prefix_mb: number;
  /** The same for its three streams alone. */
  streams_mb: number;
  prefix_keys: number;
  server_rss_mb: number | null;
  worker_rss_mb: number | null;
  event_stream: number;
  /** Fields and keys of the stats view: bounded by design. */
  stats: { duration_buckets: number; finished_seconds: number; status_keys: number };
}

const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / Math.max(1, values.length);

type Point = { t: number; v: number };

/** Least-squares slope of `v` over `t` (seconds), in units per minute; null under 2 points. */
export function lineSlope(points: Point[]): number | null {
  if (points.length < 2) return null;
  const mt = mean(points.map((p) => p.t));
  const mv = mean(points.map((p) => p.v));
  const den = points.reduce((s, p) => s + (p.t - mt) ** 2, 0);
  if (den === 0) return null;
  return round((points.reduce((s, p) => s + (p.t - mt) * (p.v - mv), 0) / den) * 60, 3);
}

/** The lowest point of each ROUND_S window from the first point on (GC floors). */
export function windowMinima(points: Point[]): Point[] {
  if (!points.length) return [];
  const t0 = points[0].t;
  const windows = new Map<number, Point>();
  for (const p of points) {
    const w = Math.floor((p.t - t0) / ROUND_S);
    const low = windows.get(w);
    if (!low || p.v < low.v) windows.set(w, p);
  }
  // A last window shorter than half a round has not seen a whole GC cycle.
  const end = points[points.length - 1].t;
  return [...windows.entries()]
    .filter(([w]) => end - (t0 + w * ROUND_S) >= ROUND_S / 2)
    .map(([, p]) => p);
}

async function prefixMemory(
  ctx: BenchContext,
  prefix: string,
  keys: ReturnType<typeof createKeys>,
  statusPattern: string,
) {
  let cursor = "0";
  let bytes = 0;
  let streamBytes = 0;
  const streams = new Set([keys.eventStream, keys.webhookStream, keys.deadLetterStream]);
  let count = 0;
  let statusKeys = 0;
  const statusPrefix = statusPattern.slice(0, -1);
  do {
    const [next, found] = await ctx.redis.scan(cursor, "MATCH", `{${prefix}}*`, "COUNT", 5_000);
    cursor = next;
    if (!found.length) continue;
    const pipeline = ctx.redis.pipeline();
    for (const key of found) pipeline.call("MEMORY", "USAGE", key, "SAMPLES", "0");
    const sizes = (await pipeline.exec()) ?? [];
    sizes.forEach(([, size], i) => {
      bytes += Number(size ?? 0);
      if (streams.has(found[i])) streamBytes += Number(size ?? 0);
    });
    count += found.length;
    statusKeys += found.filter((k) => k.startsWith(statusPrefix)).length;
  } while (cursor !== "0");
  return { mb: bytes / 1024 / 1024, streamsMb: streamBytes / 1024 / 1024, count, statusKeys };
}

async function usedMemoryMb(ctx: BenchContext) {
  const info = await ctx.redis.info("memory");
  return Number(info.match(/^used_memory:(\d+)/m)?.[1] ?? 0) / 1024 / 1024;
}

/** Runs the soak; deletes its keys and stops its processes whatever happens. */
export async function soakPhase(ctx: BenchContext, options: SoakOptions) {
  const prefix = newPrefix(ctx, "soak");
  const keys = createKeys(prefix);
  const stats = statsKeys(keys.views(0).prefix);
  const port = freePort();
  const retention = String(options.soakRetentionS);
  const env = {
    STREAM_RETENTION_S: retention,
    VIEW_RETENTION_S: retention,
    IDEMPOTENCY_TTL_S: retention,
  };
  const children: Child[] = [];
  const samples: Sample[] = [];
  try {
    const server = ctx.procs.service(
      "soak-server",
      "serve",
      serviceEnv(ctx, prefix, { PORT: String(port), ...env }),
      logPath(ctx, "soak-server"),
    );
    children.push(server);
    const worker = ctx.procs.service(
      "soak-worker",
      "worker",
      serviceEnv(ctx, prefix, { ...env, WORKER_CONCURRENCY: "200", SHUTDOWN_TIMEOUT_MS: "5000" }),
      logPath(ctx, "soak-worker"),
    );
    children.push(worker);
    await waitHttp(server, port);
    await waitLog(worker, "Consumers started");
    const template = await bodyTemplate({ callbacks: false });
    const t0 = performance.now();
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const [used, memory, streamLength, buckets, seconds] = await Promise.all([
          usedMemoryMb(ctx),
          prefixMemory(ctx, prefix, keys, `${stats.statusPrefix}*`),
          ctx.redis.xlen(keys.eventStream),
          ctx.redis.hlen(stats.durations),
          ctx.redis.hlen(stats.finished),
        ]);
        samples.push({
          t: round((performance.now() - t0) / 1000, 1),
          redis_used_mb: round(used, 3),
          prefix_mb: round(memory.mb, 3),
          streams_mb: round(memory.streamsMb, 3),
          prefix_keys: memory.count,
          server_rss_mb: memoryOf(server.pid)?.rssMb ?? null,
          worker_rss_mb: memoryOf(worker.pid)?.rssMb ?? null,
          event_stream: streamLength,
          stats: {
            duration_buckets: buckets,
            finished_seconds: seconds,
            status_keys: memory.statusKeys,
          },
        });
        await new Promise((r) => setTimeout(r, 5_000));
      }
    })();
    const load = await postTasks({
      url: `http://127.0.0.1:${port}/webhook`,
      count: Math.round(options.soakRate * options.soakSeconds),
      concurrency: 32,
      template,
      header: ctx.tokenHeader,
      token: ctx.token,
      nonce: `${ctx.runPrefix}-soak`,
      signal: ctx.signal,
      ratePerS: options.soakRate,
    });
    sampling = false;
    await sampler;
    const completed = Number(await ctx.redis.hget(stats.counters, "completed_tasks") ?? 0);
    // Steady once the oldest data can have left: one retention period, one trimming round, and
    // half a round for the TTLs and the first trims to settle.
    const steadyFromS = options.soakRetentionS + ROUND_S + ROUND_S / 2;
    const steady = samples.filter((s) => s.t >= steadyFromS);
    const points = (pick: (s: Sample) => number | null) =>
      steady.flatMap((s) => {
        const v = pick(s);
        return v === null ? [] : [{ t: s.t, v }];
      });
    // Trimming cycles: each starts with a sample where the event stream got shorter.
    const trims = samples.flatMap((s, i) =>
      i > 0 && s.event_stream < samples[i - 1].event_stream ? [i] : []
    );
    const cycles = trims.slice(0, -1).map((start, k) => {
      const cycle = samples.slice(start, trims[k + 1]);
      return {
        from_s: samples[start].t,
        peak_event_stream: Math.max(...cycle.map((s) => s.event_stream)),
        peak_streams_mb: round(Math.max(...cycle.map((s) => s.streams_mb)), 1),
        peak_redis_used_mb: round(Math.max(...cycle.map((s) => s.redis_used_mb)), 1),
      };
    });
    const last = samples[samples.length - 1];
    const result = {
      seconds: options.soakSeconds,
      offered_rate: options.soakRate,
      retention_s: options.soakRetentionS,
      accepted: load.accepted,
      failed: load.failed,
      achieved_rate: round(load.accepted / load.seconds, 1),
      completed,
      steady_from_s: steadyFromS,
      slopes_mb_per_min: {
        /** Every key of the service but its streams: the target's figure. */
        redis_keys_but_streams: lineSlope(points((s) => s.prefix_mb - s.streams_mb)),
        server_rss: lineSlope(windowMinima(points((s) => s.server_rss_mb))),
        worker_rss: lineSlope(windowMinima(points((s) => s.worker_rss_mb))),
      },
      /** The streams between two trims: bounded when these peaks stay level. */
      trim_cycles: cycles,
      end: last ?? null,
      peak: {
        prefix_mb: round(Math.max(...samples.map((s) => s.prefix_mb)), 1),
        event_stream: Math.max(...samples.map((s) => s.event_stream)),
        status_keys: Math.max(...samples.map((s) => s.stats.status_keys)),
      },
      samples,
    };
    const s = result.slopes_mb_per_min;
    ctx.say(
      `  ${result.accepted} tasks at ${result.achieved_rate}/s for ${options.soakSeconds} s (retention ${retention} s), slopes after ${steadyFromS} s in MB/min: the service's keys but its streams ${s.redis_keys_but_streams}, server RSS ${s.server_rss}, worker RSS ${s.worker_rss}; event stream peak per trimming cycle ${
        cycles.map((c) => c.peak_event_stream).join(", ")
      } entries (${cycles.map((c) => c.peak_streams_mb).join(", ")} MB)`,
    );
    return result;
  } finally {
    for (const c of children) await ctx.procs.stop(c, 10_000);
    await deletePrefix(ctx.redis, prefix);
  }
}
