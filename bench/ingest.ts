/**
 * Ingest: the real server (every check on) against the minimal handler, same load generator, same
 * body, at each connection count; then ablations of the real server and the memory run (server
 * and one worker under the highest connection count).
 */
import { createKeys } from "../src/keys.ts";
import { type BenchContext, logPath, MINIMAL_SERVER, newPrefix, serviceEnv } from "./context.ts";
import { bodyTemplate, type LoadOptions, type LoadResult, runFetchLoad, runWrk } from "./load.ts";
import { type Child, freePort, round, sampleProcesses, waitHttp, waitLog } from "./procs.ts";
import { deletePrefix, REDIS_URL } from "./redis_tools.ts";

export interface IngestOptions {
  connections: number[];
  durationS: number;
  warmupS: number;
  threads: number;
  timeoutS: number;
  useWrk: boolean;
  ablations: boolean;
  memory: boolean;
}

export interface IngestPoint extends LoadResult {
  handler: string;
  connections: number;
  /** Entries the measured run appended to the handler's stream (≥ 2xx answers). */
  stored: number;
  server: { peak_rss_mb: number; cpu_pct: number | null };
  /** Server CPU time per answered request: what the handler costs, whatever the machine's load. */
  server_cpu_us_per_request: number | null;
  redis_cpu_pct: number | null;
}

/** A server under ingest load: where it listens, and what it stored (to count and to clear). */
export interface IngestServer {
  name: string;
  child: Child;
  port: number;
  /** Deletes what the server stored. */
  clear(): Promise<unknown>;
  /** What it stored so far (stream entries, or a peer's waiting jobs). */
  stored(): Promise<number>;
}

interface Server extends IngestServer {
  prefix: string;
  stream: string;
}

async function startServer(
  ctx: BenchContext,
  name: string,
  kind: "minimal" | "real",
  env: Record<string, string> = {},
  denoArgs: string[] = [],
): Promise<Server> {
  const port = freePort();
  const prefix = newPrefix(ctx, `ingest-${name}`);
  const child = kind === "minimal"
    ? ctx.procs.spawn(name, [Deno.execPath(), "run", "-A", MINIMAL_SERVER], {
      PORT: String(port),
      KEY_PREFIX: prefix,
      REDIS_URL,
    }, logPath(ctx, name))
    : ctx.procs.service(
      name,
      "serve",
      serviceEnv(ctx, prefix, { PORT: String(port), ...env }),
      logPath(ctx, name),
      denoArgs,
    );
  await waitHttp(child, port);
  const stream = kind === "minimal"
    ? `{${prefix}}:bench:minimal`
    : createKeys(prefix).webhookStream;
  return {
    name,
    child,
    port,
    prefix,
    stream,
    clear: () => deletePrefix(ctx.redis, prefix),
    stored: () => ctx.redis.xlen(stream),
  };
}

/**
 * One measured point: optional warm-up, clean keys, measured run with CPU and RSS sampling. With
 * `extraPids` (consumers draining what the server takes) keys stay, and stored is counted as the
 * growth; `tag` keeps wrk's nonces and logs apart between phases.
 */
export async function measure(
  ctx: BenchContext,
  server: IngestServer,
  connections: number,
  options: Pick<IngestOptions, "durationS" | "warmupS" | "threads" | "timeoutS" | "useWrk">,
  templatePath: string,
  { extraPids = {}, tag = "" }: { extraPids?: Record<string, number>; tag?: string } = {},
): Promise<IngestPoint> {
  const load = (durationS: number, run: string): Promise<LoadResult> => {
    const opts: LoadOptions = {
      url: `http://127.0.0.1:${server.port}/webhook`,
      connections,
      durationS,
      templatePath,
      header: ctx.tokenHeader,
      token: ctx.token,
      nonce: `${ctx.runPrefix}-${tag}${server.name}-c${connections}-${run}`,
      threads: options.threads,
      timeoutS: options.timeoutS,
      logPath: logPath(ctx, `wrk-${tag}${server.name}-c${connections}-${run}`),
    };
    return options.useWrk ? runWrk(ctx.procs, opts) : runFetchLoad(opts);
  };
  // Consumers (the memory run) keep their groups: their keys are deleted after they stop.
  const clean = Object.keys(extraPids).length === 0;
  if (options.warmupS > 0) await load(options.warmupS, "warmup");
  ctx.signal.throwIfAborted();
  if (clean) await server.clear();
  const before = clean ? 0 : await server.stored();
  const pids: Record<string, number> = { server: server.child.pid, ...extraPids };
  if (ctx.redisPid) pids.redis = ctx.redisPid;
  const sampler = sampleProcesses(pids);
  let result: LoadResult;
  try {
    result = await load(options.durationS, "run");
  } catch (error) {
    sampler.stop();
    throw error;
  }
  const usage = sampler.stop();
  const stored = (await server.stored()) - before;
  if (clean) await server.clear();
  const point: IngestPoint = {
    handler: server.name,
    connections,
    ...result,
    stored,
    server: usage.server,
    server_cpu_us_per_request: usage.server.cpu_pct === null || !result.rps
      ? null
      : round((usage.server.cpu_pct * 10_000) / result.rps, 0),
    redis_cpu_pct: usage.redis?.cpu_pct ?? null,
  };
  for (const [name, u] of Object.entries(usage)) {
    if (name !== "server" && name !== "redis") {
      (point as unknown as Record<string, unknown>)[name] = u;
    }
  }
  ctx.say(
    `  ${server.name.padEnd(18)} c=${String(connections).padStart(4)}  ${
      String(point.rps).padStart(6)
    } req/s  p50 ${point.p50_ms} ms  p99 ${point.p99_ms} ms  errors ${point.errors.total}  rss ${point.server.peak_rss_mb} MB`,
  );
  return point;
}

export function ratios(points: IngestPoint[], connections: number[]) {
  return connections.map((c) => {
    const minimal = points.find((p) => p.handler === "minimal" && p.connections === c);
    const real = points.find((p) => p.handler === "real" && p.connections === c);
    return {
      connections: c,
      rps_ratio: minimal && real && minimal.rps ? round(real.rps / minimal.rps, 2) : null,
      p99_ratio: minimal && real && minimal.p99_ms ? round(real.p99_ms / minimal.p99_ms, 2) : null,
    };
  });
}

export async function ingestPhase(ctx: BenchContext, options: IngestOptions) {
  const templatePath = `${ctx.tmpDir}/body.json`;
  await Deno.writeTextFile(templatePath, await bodyTemplate({ callbacks: true }));
  const points: IngestPoint[] = [];
  const servers: Server[] = [];
  try {
    // Started together (the children are stopped by the bench if one of them fails to start).
    servers.push(
      ...await Promise.all([
        startServer(ctx, "minimal", "minimal"),
        startServer(ctx, "real", "real"),
      ]),
    );
    for (const c of options.connections) {
      for (const server of servers) {
        points.push(await measure(ctx, server, c, options, templatePath));
      }
    }
  } finally {
    for (const s of servers.splice(0)) await ctx.procs.stop(s.child);
  }

  // At the highest connection count, the real server with rate limits off (what they cost) and
  // with V8's old space capped at 128 MB (what the heap contributes to RSS).
  const ablations: IngestPoint[] = [];
  const top = Math.max(...options.connections);
  if (options.ablations) {
    const variants: [string, Record<string, string>, string[]][] = [
      ["real-no-ratelimit", { RATE_LIMIT_PER_MINUTE: "0" }, []],
      ["real-old-space-128", {}, ["--v8-flags=--max-old-space-size=128"]],
      // Both cores for the HTTP server: two `serve` processes sharing the port (SO_REUSEPORT).
      ["real-2-processes", { HTTP_PROCESSES: "2" }, []],
    ];
    for (const [name, env, denoArgs] of variants) {
      const server = await startServer(ctx, name, "real", env, denoArgs);
      try {
        ablations.push(await measure(ctx, server, top, options, templatePath));
      } finally {
        await ctx.procs.stop(server.child);
      }
    }
  }

  const memory = options.memory ? await memoryRun(ctx, options, top) : null;
  return {
    generator: options.useWrk ? "wrk" : "deno-fetch",
    duration_s: options.durationS,
    warmup_s: options.warmupS,
    points,
    ratios: ratios(points, options.connections),
    ablations,
    memory,
  };
}

/**
 * Peak RSS of the server and of one worker (WORKER_CONCURRENCY 1000, no provider latency) while
 * the server takes the highest connection count. Bodies carry no callback_url here, so the worker
 * makes no outbound calls.
 */
async function memoryRun(ctx: BenchContext, options: IngestOptions, connections: number) {
  const templatePath = `${ctx.tmpDir}/body-nocallback.json`;
  await Deno.writeTextFile(templatePath, await bodyTemplate({ callbacks: false }));
  const server = await startServer(ctx, "real-with-worker", "real");
  const worker = ctx.procs.service(
    "memory-worker",
    "worker",
    serviceEnv(ctx, server.prefix, { WORKER_CONCURRENCY: "1000", SHUTDOWN_TIMEOUT_MS: "2000" }),
    logPath(ctx, "memory-worker"),
  );
  try {
    await waitLog(worker, "Consumers started");
    const point = await measure(
      ctx,
      server,
      connections,
      { ...options, warmupS: 0 },
      templatePath,
      { extraPids: { worker: worker.pid } },
    );
    const w = (point as unknown as Record<string, { peak_rss_mb: number; cpu_pct: number | null }>)
      .worker;
    return {
      connections,
      server_peak_rss_mb: point.server.peak_rss_mb,
      worker_peak_rss_mb: w.peak_rss_mb,
      server_cpu_pct: point.server.cpu_pct,
      worker_cpu_pct: w.cpu_pct,
      rps: point.rps,
      p99_ms: point.p99_ms,
      errors: point.errors.total,
    };
  } finally {
    await ctx.procs.stop(worker, 5_000);
    await ctx.procs.stop(server.child);
    await deletePrefix(ctx.redis, server.prefix);
  }
}
