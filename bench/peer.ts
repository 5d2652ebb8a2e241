/**
 * Side by side with the Hono + BullMQ peer (`../shared/peers/bullmq`, read-only): end to end
 * (one server and one worker process each, the same task count, posting, concurrency and 0 ms
 * steps) and ingest (ours, the peer's Hono + `queue.add` and the minimal handler, measured
 * alternately with the same load generator and body).
 *
 * The peer runs unmodified, configured by its environment only: PORT, REDIS_URL, QUEUE_NAME (the
 * run's `bench-<random>-peer-*`, so its keys are `bull:<queue>:*`, deleted after each run),
 * CONCURRENCY and STEP_MS. Its `npm ci` happens in a temporary folder under bench/.peer-cache/,
 * renamed to a folder named after the hash of the peer's files, which later runs reuse. Without
 * node or npm, or when the install fails, the phase says why and is skipped.
 */
import type { Redis } from "ioredis";
import { type BenchContext, logPath, MINIMAL_SERVER, newPrefix, serviceEnv } from "./context.ts";
import { e2ePhase } from "./e2e.ts";
import { type IngestPoint, type IngestServer, measure } from "./ingest.ts";
import { bodyTemplate, postTasks } from "./load.ts";
import {
  type Child,
  freePort,
  ROOT,
  round,
  sampleProcesses,
  until,
  waitHttp,
  waitLog,
} from "./procs.ts";
import { deletePrefix, REDIS_URL } from "./redis_tools.ts";
import { createKeys } from "../src/keys.ts";

export const PEER_DIR = Deno.env.get("BENCH_PEER_DIR") ?? `${ROOT}../shared/peers/bullmq`;
const CACHE_DIR = `${ROOT}bench/.peer-cache`;
/** Proxy and npm settings the install needs; the peer's processes get none of them. */
const NPM_ENV = /^(https?_proxy|no_proxy|npm_config_.*|node_extra_ca_certs|ssl_cert_(file|dir))$/i;

export interface PeerOptions {
  tasks: number;
  concurrency: number;
  enqueueConcurrency: number;
  drainTimeoutS: number;
  /** Ingest connection counts for the three-way comparison. */
  connections: number[];
  durationS: number;
  warmupS: number;
  threads: number;
  timeoutS: number;
  useWrk: boolean;
}

/** One end-to-end run of either stack, in the same terms. */
export interface SideRun {
  stack: "ours" | "peer";
  tasks: number;
  enqueue_failed: number;
  enqueue_rps: number;
  drained: boolean;
  drain_s: number;
  tasks_per_s: number;
  completed: number;
  failed: number;
  /** Ours: XPENDING of the workers group; the peer: LLEN of BullMQ's active list (every 100 ms). */
  peak_in_flight: number;
  worker_cpu_ms_per_task: number;
  worker_peak_rss_mb: number;
  server_peak_rss_mb: number;
}

/** Deletes every BullMQ key of a bench run (`bull:<runPrefix>-peer-*`). */
export async function deletePeerKeys(redis: Redis, queuePrefix: string): Promise<number> {
  let cursor = "0";
  let deleted = 0;
  do {
    const [next, found] = await redis.scan(cursor, "MATCH", `bull:${queuePrefix}*`, "COUNT", 5_000);
    cursor = next;
    if (found.length) deleted += await redis.unlink(...found);
  } while (cursor !== "0");
  return deleted;
}

async function version(command: string): Promise<string | null> {
  try {
    const out = await new Deno.Command(command, { args: ["--version"], stderr: "null" }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
  } catch {
    return null;
  }
}

/** The peer's files (not node_modules), hashed: the cache folder's name. */
async function peerFiles(): Promise<{ names: string[]; hash: string }> {
  const names: string[] = [];
  for await (const e of Deno.readDir(PEER_DIR)) if (e.isFile) names.push(e.name);
  names.sort();
  const parts: Uint8Array[] = [];
  for (const name of names) {
    parts.push(new TextEncoder().encode(`${name}\0`), await Deno.readFile(`${PEER_DIR}/${name}`));
  }
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (all.set(p, at), at + p.length), 0);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  const hash = [...digest.slice(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join("");
  return { names, hash };
}

const installed = (dir: string) =>
  Deno.stat(`${dir}/node_modules/bullmq/package.json`).then(() => true, () => false);

/**
 * A folder with the peer's files and its `npm ci` done, or the reason there is none. The install
 * runs in a temporary folder, renamed once complete, so a folder found in the cache is whole.
 */
async function preparePeer(ctx: BenchContext): Promise<{ dir: string } | { skip: string }> {
  const [node, npm] = await Promise.all([version("node"), version("npm")]);
  // Deno.Command runs Deno itself for a "node" missing from PATH: only "v<major>…" is Node.js.
  const major = Number(node?.match(/^v(\d+)\./)?.[1] ?? 0);
  if (!major) return { skip: "node not found (the peer needs Node.js 20 or later and npm)" };
  if (major < 20) return { skip: `node ${node} is older than 20` };
  if (!npm) return { skip: "npm not found (the peer needs it for its npm ci)" };
  let files;
  try {
    files = await peerFiles();
  } catch (error) {
    return { skip: `the peer is not at ${PEER_DIR} (${(error as Error).message})` };
  }
  const dir = `${CACHE_DIR}/${files.hash}`;
  if (await installed(dir)) return { dir };
  const tmp = `${CACHE_DIR}/.tmp-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(tmp, { recursive: true });
  try {
    for (const name of files.names) {
      await Deno.copyFile(`${PEER_DIR}/${name}`, `${tmp}/${name}`);
      await Deno.chmod(`${tmp}/${name}`, 0o644);
    }
    ctx.say(`  npm ci of the peer in ${tmp}`);
    const env = Object.fromEntries(
      Object.entries(Deno.env.toObject()).filter(([k]) => NPM_ENV.test(k)),
    );
    const log = logPath(ctx, "peer-npm-ci");
    const npmCi = ctx.procs.spawn(
      "peer-npm-ci",
      [
        "npm",
        "ci",
        "--prefix",
        tmp,
        "--no-audit",
        "--no-fund",
      ],
      env,
      log,
    );
    let timer: ReturnType<typeof setTimeout> | undefined;
    const status = await Promise.race([
      npmCi.process.status,
      new Promise<null>((r) => (timer = setTimeout(() => r(null), 300_000))),
    ]);
    clearTimeout(timer);
    await ctx.procs.stop(npmCi, 2_000);
    ctx.signal.throwIfAborted();
    if (!status?.success) {
      const tail = (await Deno.readTextFile(log).catch(() => "")).trim().split("\n").slice(-3);
      return { skip: `npm ci of the peer failed (${tail.join(" / ")})` };
    }
    await Deno.rename(tmp, dir).catch(async (error) => {
      // Another run finished the same install first: use its folder.
      if (!await installed(dir)) throw error;
    });
    return { dir };
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

function startPeer(ctx: BenchContext, dir: string, role: "server" | "worker", env: object) {
  const name = `peer-${role}`;
  return ctx.procs.spawn(name, ["node", `${dir}/${role}.mjs`], {
    REDIS_URL,
    HOST: "127.0.0.1",
    ...env,
  } as Record<string, string>, logPath(ctx, `${name}-${crypto.randomUUID().slice(0, 4)}`));
}

/** The peer end to end: 20,000 tasks posted at once, until BullMQ counts them all finished. */
async function peerE2e(ctx: BenchContext, dir: string, options: PeerOptions): Promise<SideRun> {
  const queue = `${ctx.runPrefix}-peer-e2e`;
  const port = freePort();
  const children: Child[] = [];
  try {
    const server = startPeer(ctx, dir, "server", { PORT: String(port), QUEUE_NAME: queue });
    children.push(server);
    const worker = startPeer(ctx, dir, "worker", {
      QUEUE_NAME: queue,
      CONCURRENCY: String(options.concurrency),
      STEP_MS: "0",
    });
    children.push(worker);
    await waitHttp(server, port, "/stats");
    await waitLog(worker, "] ready");
    const key = (name: string) => `bull:${queue}:${name}`;
    let done = 0;
    let peakInFlight = 0;
    let counts = { completed: 0, failed: 0 };
    let sampling = true;
    const sampleLoop = (async () => {
      while (sampling) {
        const [[, completed], [, failed], [, active]] = (await ctx.redis.pipeline()
          .zcard(key("completed")).zcard(key("failed")).llen(key("active"))
          .exec()) as [unknown, number][];
        counts = { completed, failed };
        done = completed + failed;
        peakInFlight = Math.max(peakInFlight, active);
        await new Promise((r) => setTimeout(r, 100));
      }
    })().catch(() => {});
    const pids: Record<string, number> = { server: server.pid, worker: worker.pid };
    const usage = sampleProcesses(pids, 500);
    const t0 = performance.now();
    const enqueue = await postTasks({
      url: `http://127.0.0.1:${port}/webhook`,
      count: options.tasks,
      concurrency: options.enqueueConcurrency,
      template: await bodyTemplate({ callbacks: false }),
      header: ctx.tokenHeader,
      token: ctx.token,
      nonce: `${ctx.runPrefix}-peer`,
      signal: ctx.signal,
    });
    let drained = true;
    await until(() => done >= enqueue.accepted, "the peer's tasks to drain", {
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
    const u = usage.stop();
    const run: SideRun = {
      stack: "peer",
      tasks: enqueue.accepted,
      enqueue_failed: enqueue.failed,
      enqueue_rps: round(enqueue.accepted / enqueue.seconds, 0),
      drained,
      drain_s: round(drainS, 2),
      tasks_per_s: round(enqueue.accepted / drainS, 0),
      ...counts,
      peak_in_flight: peakInFlight,
      worker_cpu_ms_per_task: round(
        (u.worker.cpu_pct ?? 0) * 10 * (drainS / Math.max(1, enqueue.accepted)),
        2,
      ),
      worker_peak_rss_mb: u.worker.peak_rss_mb,
      server_peak_rss_mb: u.server.peak_rss_mb,
    };
    ctx.say(
      `  peer: ${run.tasks} tasks in ${run.drain_s} s = ${run.tasks_per_s} tasks/s, peak active ${peakInFlight}`,
    );
    return run;
  } finally {
    for (const c of children) await ctx.procs.stop(c, 5_000);
    await deletePeerKeys(ctx.redis, `${queue}:`);
  }
}

/** Ours end to end with the same settings, through the e2e phase's own run. */
async function oursE2e(ctx: BenchContext, options: PeerOptions): Promise<SideRun> {
  const e2e = await e2ePhase(ctx, {
    ...options,
    latenciesMs: [0],
    workers: [1],
    splitProjections: false,
    pacedRate: 0,
    pacedSeconds: 0,
    freshnessEvery: 0,
  });
  if (e2e.eventsPrefix) await deletePrefix(ctx.redis, e2e.eventsPrefix);
  const r = e2e.runs[0];
  return {
    stack: "ours",
    tasks: r.tasks,
    enqueue_failed: r.enqueue_failed,
    enqueue_rps: r.enqueue_rps,
    drained: r.drained,
    drain_s: r.drain_s,
    tasks_per_s: r.tasks_per_s,
    completed: r.completed,
    failed: r.failed,
    peak_in_flight: r.peak_in_flight,
    worker_cpu_ms_per_task: r.worker_cpu_ms_per_task,
    worker_peak_rss_mb: r.worker_peak_rss_mb,
    server_peak_rss_mb: r.server_peak_rss_mb,
  };
}

async function startIngestServers(ctx: BenchContext, dir: string): Promise<IngestServer[]> {
  const minimalPrefix = newPrefix(ctx, "peer-ingest-minimal");
  const realPrefix = newPrefix(ctx, "peer-ingest-real");
  const queue = `${ctx.runPrefix}-peer-ingest`;
  const ports = [freePort(), freePort(), freePort()];
  const servers: IngestServer[] = [
    {
      name: "minimal",
      port: ports[0],
      child: ctx.procs.spawn(
        "peer-ingest-minimal",
        [Deno.execPath(), "run", "-A", MINIMAL_SERVER],
        {
          PORT: String(ports[0]),
          KEY_PREFIX: minimalPrefix,
          REDIS_URL,
        },
        logPath(ctx, "peer-ingest-minimal"),
      ),
      clear: () => deletePrefix(ctx.redis, minimalPrefix),
      stored: () => ctx.redis.xlen(`{${minimalPrefix}}:bench:minimal`),
    },
    {
      name: "real",
      port: ports[1],
      child: ctx.procs.service(
        "peer-ingest-real",
        "serve",
        serviceEnv(ctx, realPrefix, { PORT: String(ports[1]) }),
        logPath(ctx, "peer-ingest-real"),
      ),
      clear: () => deletePrefix(ctx.redis, realPrefix),
      stored: () => ctx.redis.xlen(createKeys(realPrefix).webhookStream),
    },
    {
      name: "peer",
      port: ports[2],
      child: startPeer(ctx, dir, "server", { PORT: String(ports[2]), QUEUE_NAME: queue }),
      clear: () => deletePeerKeys(ctx.redis, `${queue}:`),
      stored: () => ctx.redis.llen(`bull:${queue}:wait`),
    },
  ];
  await Promise.all(
    servers.map((s) => waitHttp(s.child, s.port, s.name === "peer" ? "/stats" : "/health")),
  );
  return servers;
}

const ratio = (a: number | undefined, b: number | undefined) =>
  a !== undefined && b ? round(a / b, 2) : null;

/** Ratios at each connection count: ours and the peer against the minimal handler, ours/peer. */
export function sideRatios(points: IngestPoint[], connections: number[]) {
  return connections.map((c) => {
    const at = (h: string) => points.find((p) => p.handler === h && p.connections === c);
    const [minimal, real, peer] = [at("minimal"), at("real"), at("peer")];
    return {
      connections: c,
      ours_vs_minimal: {
        rps: ratio(real?.rps, minimal?.rps),
        p99: ratio(real?.p99_ms, minimal?.p99_ms),
      },
      peer_vs_minimal: {
        rps: ratio(peer?.rps, minimal?.rps),
        p99: ratio(peer?.p99_ms, minimal?.p99_ms),
      },
      ours_vs_peer: { rps: ratio(real?.rps, peer?.rps), p99: ratio(real?.p99_ms, peer?.p99_ms) },
    };
  });
}

/** End to end (ours, then the peer), then ingest (minimal, ours, peer at each connection count). */
export async function peerPhase(ctx: BenchContext, options: PeerOptions) {
  const prepared = await preparePeer(ctx);
  if ("skip" in prepared) {
    ctx.say(`  skipped: ${prepared.skip}`);
    return { skipped: prepared.skip } as const;
  }
  const { dir } = prepared;
  const bullmq = JSON.parse(await Deno.readTextFile(`${dir}/node_modules/bullmq/package.json`));
  const node = await version("node");
  try {
    const ours = await oursE2e(ctx, options);
    ctx.signal.throwIfAborted();
    const peer = await peerE2e(ctx, dir, options);
    const e2e = { ours, peer, ratio: ratio(ours.tasks_per_s, peer.tasks_per_s) };
    ctx.say(`  end to end ours/peer: ${e2e.ratio}×`);

    const templatePath = `${ctx.tmpDir}/peer-body.json`;
    await Deno.writeTextFile(templatePath, await bodyTemplate({ callbacks: true }));
    const points: IngestPoint[] = [];
    const servers: IngestServer[] = [];
    try {
      servers.push(...await startIngestServers(ctx, dir));
      for (const c of options.connections) {
        for (const s of servers) {
          points.push(await measure(ctx, s, c, options, templatePath, { tag: "side-" }));
        }
      }
    } finally {
      for (const s of servers) await ctx.procs.stop(s.child);
    }
    const ratios = sideRatios(points, options.connections);
    for (const r of ratios) {
      ctx.say(
        `  ingest c=${r.connections}: ours/minimal ${r.ours_vs_minimal.rps}×, peer/minimal ${r.peer_vs_minimal.rps}×, ours/peer ${r.ours_vs_peer.rps}× (p99 ${r.ours_vs_peer.p99}×)`,
      );
    }
    return {
      skipped: null,
      versions: { node, bullmq: String(bullmq.version) },
      settings: {
        tasks: options.tasks,
        enqueue_connections: options.enqueueConcurrency,
        worker_concurrency: options.concurrency,
        step_ms: 0,
        server_processes: 1,
        worker_processes: 1,
      },
      e2e,
      ingest: {
        generator: options.useWrk ? "wrk" : "deno-fetch",
        duration_s: options.durationS,
        warmup_s: options.warmupS,
        points,
        ratios,
      },
    };
  } finally {
    await deletePeerKeys(ctx.redis, `${ctx.runPrefix}-peer-`);
  }
}
