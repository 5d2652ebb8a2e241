/**
 * End to end: N tasks through the server, 1 or 2 worker processes and the offline providers, at
 * each provider latency; tasks/s, time to drain, peak tasks in flight, projection lag.
 */
import { CONSUMER_KINDS } from "../consumers/kinds.ts";
import { createKeys } from "../src/keys.ts";
import { statsKeys } from "../src/projections/stats/view.ts";
import { parseGroupInfo } from "../src/redis/streams.ts";
import { type BenchContext, logPath, newPrefix, serviceEnv } from "./context.ts";
import { startFreshnessProbeProcess } from "./freshness.ts";
import { bodyTemplate, postTasks } from "./load.ts";
import { type Child, freePort, round, sampleProcesses, until, waitHttp, waitLog } from "./procs.ts";
import { deletePrefix, REDIS_URL } from "./redis_tools.ts";

const WORKER_GROUP = CONSUMER_KINDS.tasks.group!.name;
const SINK_GROUP = CONSUMER_KINDS.scenes.group!.name;

export interface E2eOptions {
  tasks: number;
  latenciesMs: number[];
  workers: number[];
  concurrency: number;
  enqueueConcurrency: number;
  drainTimeoutS: number;
  /** One more backlog run (0 ms, one worker) with the projections in their own process. */
  splitProjections: boolean;
  /** A run with tasks offered at this rate (one worker, no provider latency); 0 skips it. */
  pacedRate: number;
  pacedSeconds: number;
  /** Probe GET /task/{id} after every Nth task.completed in the first run; 0 skips it. */
  freshnessEvery: number;
}

export interface LagSummary {
  count: number;
  p50: number;
  p99: number;
  max: number;
}

/**
 * Projection lag from worker logs: every "Projection lag (ms)" line (one per 10 s window with
 * traffic) and the final "Consumers stopped" line. p50 is the count-weighted mean of the windows'
 * medians; p99 and max are the worst window's (exact when the run fits one window).
 */
export function parseProjectionLag(logs: string[]): LagSummary & { windows: number } {
  const windows: LagSummary[] = [];
  for (const text of logs) {
    for (const line of text.split("\n")) {
      if (!line.startsWith("{")) continue;
      let record: Record<string, unknown>;
      try {
        record = JSON.parse(line);
      } catch {
        continue;
      }
      const lag = record.msg === "Projection lag (ms)"
        ? record
        : record.msg === "Consumers stopped"
        ? record.projection_lag_ms as Record<string, unknown> | undefined
        : undefined;
      if (lag && Number(lag.count) > 0) {
        windows.push({
          count: Number(lag.count),
          p50: Number(lag.p50),
          p99: Number(lag.p99),
          max: Number(lag.max),
        });
      }
    }
  }
  const count = windows.reduce((s, w) => s + w.count, 0);
  return {
    count,
    p50: count ? round(windows.reduce((s, w) => s + w.p50 * w.count, 0) / count, 1) : 0,
    p99: Math.max(0, ...windows.map((w) => w.p99)),
    max: Math.max(0, ...windows.map((w) => w.max)),
    windows: windows.length,
  };
}

async function oneRun(
  ctx: BenchContext,
  options: E2eOptions,
  latencyMs: number,
  workerCount: number,
  template: string,
  keep: boolean,
  ratePerS?: number,
  split = false,
  freshnessEvery = 0,
) {
  const name = `e2e-l${latencyMs}-w${workerCount}${ratePerS ? `-r${ratePerS}` : ""}${
    split ? "-split" : ""
  }`;
  const prefix = newPrefix(ctx, name);
  const keys = createKeys(prefix);
  const port = freePort();
  const children: Child[] = [];
  try {
    const server = ctx.procs.service(
      `${name}-server`,
      "serve",
      serviceEnv(ctx, prefix, { PORT: String(port) }),
      logPath(ctx, `${name}-server`),
    );
    children.push(server);
    // With `split`, the projections run in one more process of their own (CONSUMERS); it counts
    // among the workers for CPU, memory and lag.
    const workers: Child[] = [];
    const consumers = [
      ...Array.from(
        { length: workerCount },
        () => split ? "tasks,scenes,callbacks" : "tasks,scenes,callbacks,projections",
      ),
      ...(split ? ["projections"] : []),
    ];
    for (const [i, list] of consumers.entries()) {
      const worker = ctx.procs.service(
        `${name}-worker${i}`,
        "worker",
        serviceEnv(ctx, prefix, {
          OFFLINE_LATENCY_MS: String(latencyMs),
          WORKER_CONCURRENCY: String(options.concurrency),
          SHUTDOWN_TIMEOUT_MS: "15000",
          CONSUMERS: list,
        }),
        logPath(ctx, `${name}-worker${i}`),
      );
      workers.push(worker);
      children.push(worker);
    }
    await waitHttp(server, port);
    for (const w of workers) await waitLog(w, "Consumers started");

    // In flight: entries the "workers" group delivered and not yet acknowledged (XPENDING).
    // Pipeline done: the workers and the scene sink have read and acknowledged everything (so
    // every task.completed is in the log), whether or not the projections have caught up.
    let peakInFlight = 0;
    let done = 0;
    let enqueued = false;
    let pipelineDoneAt: number | null = null;
    let sampling = true;
    const sampleLoop = (async () => {
      while (sampling) {
        const [[, pending], [, completed], [, failed], [, webhookGroups], [, eventGroups]] =
          (await ctx.redis.pipeline()
            .xpending(keys.webhookStream, WORKER_GROUP)
            .hget(statsKeys(keys.views(0).prefix).counters, "completed_tasks")
            .hget(statsKeys(keys.views(0).prefix).counters, "failed_tasks")
            .xinfo("GROUPS", keys.webhookStream)
            .xinfo("GROUPS", keys.eventStream)
            .exec()) as [unknown, unknown][];
        const inFlight = Number((pending as unknown[] | null)?.[0] ?? 0);
        peakInFlight = Math.max(peakInFlight, inFlight);
        done = Number(completed ?? 0) + Number(failed ?? 0);
        if (enqueued && pipelineDoneAt === null) {
          const idle = (groups: unknown, name: string) => {
            const g = parseGroupInfo((groups ?? []) as unknown[][]).find((x) => x.name === name);
            return g !== undefined && g.lag === 0 && g.pending === 0;
          };
          if (idle(webhookGroups, WORKER_GROUP) && idle(eventGroups, SINK_GROUP)) {
            pipelineDoneAt = performance.now();
          }
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    })().catch(() => {});
    const pids: Record<string, number> = { server: server.pid };
    workers.forEach((w, i) => (pids[`worker${i}`] = w.pid));
    if (ctx.redisPid) pids.redis = ctx.redisPid;
    const memory = sampleProcesses(pids, 500);
    const freshness = freshnessEvery > 0
      ? await startFreshnessProbeProcess({
        eventStream: keys.eventStream,
        base: `http://127.0.0.1:${port}`,
        every: freshnessEvery,
        redisUrl: REDIS_URL,
      })
      : null;

    const t0 = performance.now();
    const enqueue = await postTasks({
      url: `http://127.0.0.1:${port}/webhook`,
      count: options.tasks,
      concurrency: options.enqueueConcurrency,
      template,
      header: ctx.tokenHeader,
      token: ctx.token,
      nonce: `${ctx.runPrefix}-${name}`,
      signal: ctx.signal,
      ratePerS,
    });
    enqueued = true;
    let drained = true;
    await until(() => done >= enqueue.accepted, "the tasks to drain", {
      timeoutMs: options.drainTimeoutS * 1000,
      intervalMs: 20,
      signal: ctx.signal,
    }).catch((error) => {
      if (ctx.signal.aborted) throw error;
      drained = false;
    });
    const drainS = (performance.now() - t0) / 1000;
    sampling = false;
    await sampleLoop;
    const usage = memory.stop();
    const status = await freshness?.stop() ?? null;
    const stats = await ctx.redis.hgetall(statsKeys(keys.views(0).prefix).counters);
    for (const w of workers) await ctx.procs.stop(w, 20_000);
    await ctx.procs.stop(server);
    const lag = parseProjectionLag(
      await Promise.all(workers.map((w) => Deno.readTextFile(w.logPath))),
    );
    const result = {
      latency_ms: latencyMs,
      workers: workerCount,
      /** Whether the projections ran in a process of their own (CONSUMERS=projections). */
      split_projections: split,
      /** Tasks offered per second (paced run), or null when all were posted at once. */
      offered_rate: ratePerS ?? null,
      worker_concurrency: options.concurrency,
      tasks: enqueue.accepted,
      enqueue_failed: enqueue.failed,
      enqueue_s: round(enqueue.seconds, 2),
      enqueue_rps: round(enqueue.accepted / enqueue.seconds, 0),
      drained,
      drain_s: round(drainS, 2),
      tasks_per_s: round(enqueue.accepted / drainS, 0),
      /** Until the workers and the scene sink were idle: the pipeline without the projections. */
      pipeline_drain_s: pipelineDoneAt === null ? null : round((pipelineDoneAt - t0) / 1000, 2),
      completed: Number(stats.completed_tasks ?? 0),
      failed: Number(stats.failed_tasks ?? 0),
      peak_in_flight: peakInFlight,
      projection_lag_ms: lag,
      /** From task.completed appended to GET /task/{id} answering completed (sampled tasks). */
      status_freshness: status,
      server_peak_rss_mb: usage.server.peak_rss_mb,
      worker_peak_rss_mb: Math.max(
        ...workers.map((_, i) => usage[`worker${i}`].peak_rss_mb),
      ),
      worker_cpu_pct: workers.map((_, i) => usage[`worker${i}`].cpu_pct),
      /** CPU time of all worker processes per task (pipeline, sink, callbacks, projections). */
      worker_cpu_ms_per_task: round(
        workers.reduce((sum, _, i) => sum + (usage[`worker${i}`].cpu_pct ?? 0), 0) * 10 *
          (drainS / Math.max(1, enqueue.accepted)),
        2,
      ),
      server_cpu_pct: usage.server.cpu_pct,
      redis_cpu_pct: usage.redis?.cpu_pct ?? null,
    };
    ctx.say(
      `  latency ${latencyMs} ms, ${workerCount} worker(s)${split ? " + a projector process" : ""}${
        ratePerS ? `, offered ${ratePerS}/s` : ""
      }: ${result.tasks} tasks in ${result.drain_s} s = ${result.tasks_per_s} tasks/s (pipeline alone ${result.pipeline_drain_s} s), peak in flight ${peakInFlight}, lag p50 ${lag.p50} / p99 ${lag.p99} ms${
        status
          ? `; GET /task fresh p50 ${status.p50_ms} / p99 ${status.p99_ms} ms (${status.samples} sampled)`
          : ""
      }`,
    );
    return { result, prefix: keep ? prefix : null };
  } finally {
    for (const c of children) await ctx.procs.stop(c, 5_000);
    if (!keep) await deletePrefix(ctx.redis, prefix);
  }
}

/**
 * Runs every (latency, workers) combination. The event log of the first run is kept (its prefix
 * is returned) for the replay phase, which deletes it.
 */
export async function e2ePhase(ctx: BenchContext, options: E2eOptions) {
  const template = await bodyTemplate({ callbacks: false });
  const runs = [];
  let kept: string | null = null;
  for (const latency of options.latenciesMs) {
    for (const workers of options.workers) {
      ctx.signal.throwIfAborted();
      // The first run (the 0 ms burst by default) also probes status freshness.
      const probe = runs.length === 0 ? options.freshnessEvery : 0;
      const { result, prefix } = await oneRun(
        ctx,
        options,
        latency,
        workers,
        template,
        !kept,
        undefined,
        false,
        probe,
      );
      kept ??= prefix;
      runs.push(result);
    }
  }
  if (options.splitProjections) {
    // The same backlog with the projections in a process of their own.
    const { result } = await oneRun(ctx, options, 0, 1, template, false, undefined, true);
    runs.push(result);
  }
  if (options.pacedRate > 0) {
    // Below capacity: the projection lag of a steady flow rather than of a backlog.
    const tasks = Math.round(options.pacedRate * options.pacedSeconds);
    const paced = { ...options, tasks };
    const { result } = await oneRun(ctx, paced, 0, 1, template, false, options.pacedRate);
    runs.push(result);
  }
  return { runs, eventsPrefix: kept };
}
