/**
 * `deno task bench`: ingest, end to end, replay and memory, bounded in time, printed as a table
 * and written as JSON to bench/results/<timestamp>.json and bench/results/latest.json.
 *
 * Every Redis key lives under `{bench-<random>-<phase>}` and is deleted when its phase ends (and
 * again at the end); every child process is stopped in `finally`, also on Ctrl-C.
 * Run with --help for the flags.
 */
import { parseArgs } from "node:util";
import type { Redis } from "ioredis";
import type { BenchContext } from "./context.ts";
import { clusterPhase } from "./cluster.ts";
import { dashboardPhase } from "./dashboard.ts";
import { e2ePhase } from "./e2e.ts";
import { ingestPhase } from "./ingest.ts";
import { deletePeerKeys, peerPhase } from "./peer.ts";
import { hasWrk } from "./load.ts";
import { Processes } from "./procs.ts";
import { cpuProfilePhase, redisCommandsPhase, workerCpuProfilePhase } from "./profile.ts";
import { replayPhase } from "./replay.ts";
import { soakPhase } from "./soak.ts";
import { ssePhase } from "./sse.ts";
import { table, type Target, targets, writeResult } from "./report.ts";
import { connect, deletePrefix, deleteRunKeys, redisVersion } from "./redis_tools.ts";

export interface BenchOptions {
  /** `soak`, `sse` and `cluster` only run when named: they take minutes of their own. */
  phases: (
    | "ingest"
    | "e2e"
    | "replay"
    | "profile"
    | "peer"
    | "soak"
    | "sse"
    | "dashboard"
    | "cluster"
  )[];
  connections: number[];
  durationS: number;
  warmupS: number;
  threads: number;
  timeoutS: number;
  ablations: boolean;
  memory: boolean;
  tasks: number;
  latenciesMs: number[];
  workers: number[];
  concurrency: number;
  enqueueConcurrency: number;
  drainTimeoutS: number;
  splitProjections: boolean;
  pacedRate: number;
  pacedSeconds: number;
  freshnessEvery: number;
  replayEvents: number;
  profileRequests: number;
  cpuProfile: boolean;
  soakSeconds: number;
  soakRate: number;
  soakRetentionS: number;
  /** SSE: concurrent client counts, tasks/s, seconds, all-events clients, idle clients for ingest. */
  sseClients: number[];
  sseRate: number;
  sseSeconds: number;
  sseAllClients: number;
  sseIngestClients: number;
  /** Peer: ingest connection counts for ours vs BullMQ vs minimal ([]: the top of `connections`). */
  peerConnections: number[];
  /** Dashboard: tasks in the index, pages asked for per kind of query. */
  dashboardTasks: number;
  dashboardRepeats: number;
  /** Cluster: PARTITIONS values, worker process counts, tasks per run, ingest connections. */
  clusterPartitions: number[];
  clusterWorkers: number[];
  clusterTasks: number;
  clusterConnections: number;
  logLevel: "debug" | "info" | "warn" | "error";
  /** Use wrk when installed (false: the fetch loop in this process). */
  wrk: boolean;
  /** Where the JSON goes; null writes nothing. */
  outDir: string | null;
  keepLogs: boolean;
  quiet: boolean;
}

export const DEFAULTS: BenchOptions = {
  phases: ["ingest", "e2e", "replay", "profile", "peer", "dashboard"],
  connections: [1, 100, 1000],
  durationS: 10,
  warmupS: 2,
  threads: 2,
  timeoutS: 5,
  ablations: true,
  memory: true,
  tasks: 20_000,
  latenciesMs: [0, 500],
  workers: [1, 2],
  concurrency: 1000,
  enqueueConcurrency: 64,
  drainTimeoutS: 300,
  splitProjections: true,
  pacedRate: 1_000,
  pacedSeconds: 10,
  freshnessEvery: 100,
  replayEvents: 100_000,
  profileRequests: 200,
  cpuProfile: true,
  soakSeconds: 360,
  soakRate: 150,
  soakRetentionS: 60,
  sseClients: [1_000, 10_000],
  sseRate: 100,
  sseSeconds: 10,
  sseAllClients: 20,
  sseIngestClients: 1_000,
  peerConnections: [],
  dashboardTasks: 100_000,
  dashboardRepeats: 30,
  clusterPartitions: [1, 3, 6],
  clusterWorkers: [1, 2],
  clusterTasks: 5_000,
  clusterConnections: 100,
  logLevel: "info",
  wrk: true,
  outDir: new URL("./results", import.meta.url).pathname,
  keepLogs: false,
  quiet: false,
};

type Awaited2<T> = T extends Promise<infer U> ? U : T;

export interface BenchResult {
  version: 1;
  /** Every Redis key of the run was under `{<run_prefix>-…}` (all deleted at the end). */
  run_prefix: string;
  started_at: string;
  finished_at: string;
  elapsed_s: number;
  machine: {
    cores: number;
    cpu_model: string;
    memory_gb: number;
    os: string;
    deno: string;
    v8: string;
    redis: string;
  };
  options: BenchOptions;
  ingest: Awaited2<ReturnType<typeof ingestPhase>> | null;
  e2e: { runs: Awaited2<ReturnType<typeof e2ePhase>>["runs"] } | null;
  replay: Awaited2<ReturnType<typeof replayPhase>> | null;
  profile: {
    redis_commands?: Record<string, unknown>;
    cpu?: Awaited2<ReturnType<typeof cpuProfilePhase>>;
    worker_cpu?: Awaited2<ReturnType<typeof workerCpuProfilePhase>>;
  } | null;
  soak: Awaited2<ReturnType<typeof soakPhase>> | null;
  sse?: Awaited2<ReturnType<typeof ssePhase>> | null;
  /** Side by side with the Hono + BullMQ peer; `skipped` says why when node/npm are missing. */
  peer?: Awaited2<ReturnType<typeof peerPhase>> | null;
  dashboard?: Awaited2<ReturnType<typeof dashboardPhase>> | null;
  /** On a local Redis Cluster: partitions, worker processes, ACK_REPLICAS, memory per task. */
  cluster?: Awaited2<ReturnType<typeof clusterPhase>> | null;
  targets: Target[];
  notes: string[];
  /** Phases that failed (the bench exits 1 when there is any). */
  errors: string[];
}

async function machine(redis: Redis) {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  return {
    cores: navigator.hardwareConcurrency,
    cpu_model: cpuinfo.match(/^model name\s*:\s*(.*)$/m)?.[1] ?? "unknown",
    memory_gb: Math.round(Number(meminfo.match(/^MemTotal:\s+(\d+)/m)?.[1] ?? 0) / 1024 / 1024),
    os: `${Deno.build.os} ${Deno.osRelease()}`,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    redis: (await redisVersion(redis)).version,
  };
}

/** Runs the bench; stops every process it started and deletes every key it wrote, whatever happens. */
export async function runBench(partial: Partial<BenchOptions> = {}): Promise<BenchResult> {
  const options = { ...DEFAULTS, ...partial };
  const started = new Date();
  const say = (line: string) => options.quiet || console.log(line);
  const abort = new AbortController();
  const procs = new Processes();
  const redis = connect("bench");
  const tmpDir = await Deno.makeTempDir({ prefix: "bench-" });
  let signals = 0;
  const onSignal = () => {
    signals++;
    if (signals > 1) Deno.exit(130);
    console.error("Interrupted: stopping the bench's processes and deleting its keys");
    abort.abort(new Error("Interrupted"));
    procs.stopAll(2_000);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const ctx: BenchContext = {
    procs,
    redis,
    runPrefix: `bench-${crypto.randomUUID().slice(0, 8)}`,
    prefixes: new Set(),
    tmpDir,
    redisPid: null,
    signal: abort.signal,
    token: `bench-token-${crypto.randomUUID()}`,
    tokenHeader: "x-webhook-token",
    logLevel: options.logLevel,
    say,
  };
  const result: BenchResult = {
    version: 1,
    run_prefix: ctx.runPrefix,
    started_at: started.toISOString(),
    finished_at: "",
    elapsed_s: 0,
    machine: await machine(redis),
    options,
    ingest: null,
    e2e: null,
    replay: null,
    profile: null,
    soak: null,
    targets: [],
    notes: [],
    errors: [],
  };
  try {
    ctx.redisPid = (await redisVersion(redis)).pid;
    const useWrk = options.wrk && await hasWrk();
    if (options.wrk && !useWrk) {
      const note =
        "wrk not found: install it with `apt-get install wrk`; falling back to a fetch load loop in the bench process (numbers not comparable with wrk runs)";
      console.error(note);
      result.notes.push(note);
    }
    say(`Bench ${ctx.runPrefix} (logs in ${tmpDir})`);
    // A failing phase is recorded in `errors` and the others still run; Ctrl-C stops them all.
    const phase = async (name: string, work: () => Promise<void>) => {
      say(name);
      try {
        await work();
      } catch (error) {
        if (abort.signal.aborted) throw error;
        const message = `${name}: ${(error as Error).message}`;
        console.error(`Phase failed: ${message}`);
        result.errors.push(message);
        await procs.stopAll();
      }
    };
    if (options.phases.includes("ingest")) {
      await phase("Ingest", async () => {
        result.ingest = await ingestPhase(ctx, { ...options, useWrk });
      });
    }
    let eventsPrefix: string | null = null;
    if (options.phases.includes("e2e")) {
      await phase("End to end", async () => {
        const e2e = await e2ePhase(ctx, options);
        result.e2e = { runs: e2e.runs };
        eventsPrefix = e2e.eventsPrefix;
        // Kept for the replay phase only: a later run of the same name (the peer phase's) must
        // not find its stats view already counting these tasks.
        if (eventsPrefix && !options.phases.includes("replay")) {
          await deletePrefix(ctx.redis, eventsPrefix);
          eventsPrefix = null;
        }
      });
    }
    if (options.phases.includes("replay")) {
      await phase("Replay", async () => {
        if (eventsPrefix) {
          result.replay = await replayPhase(ctx, eventsPrefix, options.replayEvents);
        } else result.notes.push("replay skipped: it replays the events of the end-to-end phase");
      });
    }
    if (options.phases.includes("profile")) {
      result.profile = {};
      const profile = result.profile;
      await phase("Profile: Redis commands", async () => {
        profile.redis_commands = await redisCommandsPhase(ctx, options.profileRequests);
      });
      if (options.cpuProfile && useWrk) {
        await phase("Profile: server CPU", async () => {
          profile.cpu = await cpuProfilePhase(ctx, {
            connections: Math.max(...options.connections),
            durationS: options.durationS,
            threads: options.threads,
          });
        });
      }
      if (options.cpuProfile) {
        await phase("Profile: worker CPU", async () => {
          profile.worker_cpu = await workerCpuProfilePhase(
            ctx,
            Math.min(options.tasks, 5_000),
            options.concurrency,
          );
        });
      }
    }
    if (options.phases.includes("peer")) {
      await phase("Side by side with Hono + BullMQ", async () => {
        const connections = options.peerConnections.length
          ? options.peerConnections
          : [Math.max(...options.connections)];
        result.peer = await peerPhase(ctx, { ...options, connections, useWrk });
        if (result.peer.skipped) result.notes.push(`peer skipped: ${result.peer.skipped}`);
      });
    }
    if (options.phases.includes("sse")) {
      await phase("SSE", async () => {
        const sse = await ssePhase(ctx, { ...options, useWrk });
        result.sse = sse;
        for (const r of sse.runs) {
          say(
            `  ${r.clients} clients: all-events p50/p99 ${r.all_events.p50_ms}/${r.all_events.p99_ms} ms, ` +
              `per-task p50/p99 ${r.per_task.p50_ms}/${r.per_task.p99_ms} ms, ` +
              `${r.rss_kb_per_client} KB RSS per client, ${r.tasks_per_s} tasks/s`,
          );
        }
        if (sse.ingest) {
          say(
            `  ingest with ${sse.ingest.idle_clients} idle clients: ${sse.ingest.ratio}× without`,
          );
        }
      });
    }
    if (options.phases.includes("dashboard")) {
      await phase("Dashboard: the task index", async () => {
        result.dashboard = await dashboardPhase(ctx, {
          tasks: options.dashboardTasks,
          repeats: options.dashboardRepeats,
        });
      });
    }
    if (options.phases.includes("cluster")) {
      await phase("Redis Cluster", async () => {
        result.cluster = await clusterPhase(ctx, { ...options, useWrk });
      });
    }
    if (options.phases.includes("soak")) {
      await phase("Soak", async () => {
        result.soak = await soakPhase(ctx, options);
      });
    }
  } finally {
    await procs.stopAll();
    for (const prefix of ctx.prefixes) await deletePrefix(redis, prefix).catch(() => {});
    await deleteRunKeys(redis, ctx.runPrefix).catch(() => {});
    await deletePeerKeys(redis, `${ctx.runPrefix}-peer-`).catch(() => {});
    redis.disconnect();
    if (!options.keepLogs) await Deno.remove(tmpDir, { recursive: true }).catch(() => {});
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
  result.finished_at = new Date().toISOString();
  result.elapsed_s = Math.round((Date.now() - started.getTime()) / 100) / 10;
  result.targets = targets(result);
  return result;
}

const HELP = `deno task bench [flags]   (also: deno run -A bench/run.ts)

  --phases LIST            ingest,e2e,replay,profile,peer,dashboard,soak,sse,cluster (default:
                           all but soak, sse and cluster)
  --connections LIST       ingest connection counts (default 1,100,1000)   env BENCH_CONNECTIONS
  --duration S             seconds per ingest point (default 10)          env BENCH_DURATION
  --warmup S               warm-up seconds before each point (default 2)
  --threads N              wrk threads (default 2)
  --no-ablations           skip the real server with rate limits off / old space capped
  --no-memory              skip the memory run (server + worker under the top connection count)
  --tasks N                end-to-end tasks per run (default 20000)       env BENCH_TASKS
  --latencies LIST         OFFLINE_LATENCY_MS values (default 0,500)
  --workers LIST           worker process counts (default 1,2)
  --concurrency N          WORKER_CONCURRENCY (default 1000)
  --no-split               skip the backlog run with the projections in a process of their own
  --paced-rate N           an extra run offering N tasks/s for --paced-seconds (default 1000, 10;
                           0 skips it): projection lag without a backlog
  --freshness-every N      first end-to-end run: poll GET /task/{id} after every Nth
                           task.completed until it answers completed (default 100; 0 skips)
  --replay-events N        events to rebuild from (default 100000)        env BENCH_REPLAY_EVENTS
  --profile-requests N     requests/tasks under MONITOR (default 200)
  --no-cpu-profile         skip the V8 CPU profile of the server
  --soak-seconds S         soak: seconds at a steady rate (default 360; needs at least
                           retention + 210 for a slope)                env BENCH_SOAK_SECONDS
  --soak-rate N            soak: tasks/s offered (default 150)            env BENCH_SOAK_RATE
  --soak-retention S       soak: STREAM_RETENTION_S, VIEW_RETENTION_S and IDEMPOTENCY_TTL_S
                           (default 60); reports the slopes (MB/min) of Redis memory and of
                           the server's and worker's RSS once retention has trimmed
  --sse-clients LIST       sse: concurrent SSE clients per run (default 1000,10000): idle
                           per-task followers (follow=true on finished tasks) plus
                           --sse-all-clients (default 20) on /events/stream measuring every
                           event's delivery latency; each task posted gets a follower too
  --sse-rate N             sse: tasks/s completed meanwhile (default 100)  env BENCH_SSE_RATE
  --sse-seconds S          sse: seconds at that rate (default 10)
  --sse-ingest-clients N   sse: ingest req/s with N idle SSE clients vs without (default 1000;
                           0 skips it)
  --peer-connections LIST  peer: ingest connection counts for ours vs the Hono + BullMQ peer
                           vs the minimal handler (default: the highest --connections). The
                           peer phase also runs ours and the peer end to end with --tasks and
                           --concurrency (one server, one worker, 0 ms); it needs node >= 20
                           and npm (skipped, with a note, without them); the peer comes from
                           ../shared/peers/bullmq (env BENCH_PEER_DIR), installed once with
                           npm ci into bench/.peer-cache/
  --dashboard-tasks N       dashboard: tasks folded into the task index (default 100000)
                           env BENCH_DASHBOARD_TASKS
  --dashboard-repeats N     dashboard: pages asked for per kind of query (default 30)
  --cluster-partitions L   cluster: PARTITIONS values (default 1,3,6) on a local Redis
                           Cluster of 3 masters + 3 replicas started for the phase (free ports,
                           temporary folders, stopped at its end); ingest of each (and with
                           ACK_REPLICAS=1 at 1 and the most), end to end with --cluster-workers
                           (default 1,2) worker processes and --cluster-tasks (default 5000)
                           tasks, Redis CPU per task on the masters (one partition's ceiling)
                           and Redis memory per task by kind of key
  --cluster-connections N  cluster: ingest connections (default 100)
  --no-wrk                 load from a fetch loop in this process instead of wrk
  --log-level LEVEL        LOG_LEVEL of the service processes (default info)
  --out DIR                results directory (default bench/results); --no-write writes nothing
  --keep-logs              keep the children's logs (the path is printed)
  --quick                  a short run (about 2 minutes): 3 s points, 2000 tasks, 20000 events`;

const list = (s: string) => s.split(",").map((x) => Number(x.trim())).filter(Number.isFinite);

export function parseOptions(args: string[], env = Deno.env.toObject()): Partial<BenchOptions> {
  const { values } = parseArgs({
    args,
    options: {
      help: { type: "boolean" },
      quick: { type: "boolean" },
      phases: { type: "string" },
      connections: { type: "string" },
      duration: { type: "string" },
      warmup: { type: "string" },
      threads: { type: "string" },
      "no-ablations": { type: "boolean" },
      "no-memory": { type: "boolean" },
      "no-split": { type: "boolean" },
      tasks: { type: "string" },
      latencies: { type: "string" },
      workers: { type: "string" },
      concurrency: { type: "string" },
      "replay-events": { type: "string" },
      "paced-rate": { type: "string" },
      "paced-seconds": { type: "string" },
      "freshness-every": { type: "string" },
      "profile-requests": { type: "string" },
      "no-cpu-profile": { type: "boolean" },
      "soak-seconds": { type: "string" },
      "soak-rate": { type: "string" },
      "soak-retention": { type: "string" },
      "sse-clients": { type: "string" },
      "sse-rate": { type: "string" },
      "sse-seconds": { type: "string" },
      "sse-all-clients": { type: "string" },
      "sse-ingest-clients": { type: "string" },
      "peer-connections": { type: "string" },
      "dashboard-tasks": { type: "string" },
      "dashboard-repeats": { type: "string" },
      "cluster-partitions": { type: "string" },
      "cluster-workers": { type: "string" },
      "cluster-tasks": { type: "string" },
      "cluster-connections": { type: "string" },
      "log-level": { type: "string" },
      "no-wrk": { type: "boolean" },
      out: { type: "string" },
      "no-write": { type: "boolean" },
      "keep-logs": { type: "boolean" },
    },
  });
  if (values.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  const o: Partial<BenchOptions> = values.quick
    ? {
      durationS: 3,
      warmupS: 1,
      tasks: 2_000,
      replayEvents: 20_000,
      dashboardTasks: 20_000,
      drainTimeoutS: 120,
      pacedSeconds: 5,
    }
    : {};
  const num = (flag: string | undefined, name: string) => {
    const raw = flag ?? env[name];
    return raw === undefined ? undefined : Number(raw);
  };
  const set = <K extends keyof BenchOptions>(key: K, value: BenchOptions[K] | undefined) => {
    if (value !== undefined && !(typeof value === "number" && !Number.isFinite(value))) {
      o[key] = value;
    }
  };
  set("phases", values.phases?.split(",") as BenchOptions["phases"]);
  const conns = values.connections ?? env.BENCH_CONNECTIONS;
  set("connections", conns ? list(conns) : undefined);
  set("durationS", num(values.duration, "BENCH_DURATION"));
  set("warmupS", num(values.warmup, "BENCH_WARMUP"));
  set("threads", num(values.threads, "BENCH_THREADS"));
  if (values["no-ablations"]) o.ablations = false;
  if (values["no-memory"]) o.memory = false;
  if (values["no-split"]) o.splitProjections = false;
  set("tasks", num(values.tasks, "BENCH_TASKS"));
  set("latenciesMs", values.latencies ? list(values.latencies) : undefined);
  set("workers", values.workers ? list(values.workers) : undefined);
  set("concurrency", num(values.concurrency, "BENCH_CONCURRENCY"));
  set("pacedRate", num(values["paced-rate"], "BENCH_PACED_RATE"));
  set("pacedSeconds", num(values["paced-seconds"], "BENCH_PACED_SECONDS"));
  set("freshnessEvery", num(values["freshness-every"], "BENCH_FRESHNESS_EVERY"));
  set("replayEvents", num(values["replay-events"], "BENCH_REPLAY_EVENTS"));
  set("profileRequests", num(values["profile-requests"], "BENCH_PROFILE_REQUESTS"));
  if (values["no-cpu-profile"]) o.cpuProfile = false;
  set("soakSeconds", num(values["soak-seconds"], "BENCH_SOAK_SECONDS"));
  set("soakRate", num(values["soak-rate"], "BENCH_SOAK_RATE"));
  set("soakRetentionS", num(values["soak-retention"], "BENCH_SOAK_RETENTION"));
  set("sseClients", values["sse-clients"] ? list(values["sse-clients"]) : undefined);
  set("sseRate", num(values["sse-rate"], "BENCH_SSE_RATE"));
  set("sseSeconds", num(values["sse-seconds"], "BENCH_SSE_SECONDS"));
  set("sseAllClients", num(values["sse-all-clients"], "BENCH_SSE_ALL_CLIENTS"));
  set("sseIngestClients", num(values["sse-ingest-clients"], "BENCH_SSE_INGEST_CLIENTS"));
  const peerConns = values["peer-connections"] ?? env.BENCH_PEER_CONNECTIONS;
  set("peerConnections", peerConns ? list(peerConns) : undefined);
  set("dashboardTasks", num(values["dashboard-tasks"], "BENCH_DASHBOARD_TASKS"));
  set("dashboardRepeats", num(values["dashboard-repeats"], "BENCH_DASHBOARD_REPEATS"));
  const clusterList = (flag: string | undefined) => flag ? list(flag) : undefined;
  set("clusterPartitions", clusterList(values["cluster-partitions"]));
  set("clusterWorkers", clusterList(values["cluster-workers"]));
  set("clusterTasks", num(values["cluster-tasks"], "BENCH_CLUSTER_TASKS"));
  set("clusterConnections", num(values["cluster-connections"], "BENCH_CLUSTER_CONNECTIONS"));
  if (values["no-wrk"]) o.wrk = false;
  set("logLevel", values["log-level"] as BenchOptions["logLevel"] | undefined);
  if (values.out) o.outDir = values.out;
  if (values["no-write"]) o.outDir = null;
  if (values["keep-logs"]) o.keepLogs = true;
  return o;
}

if (import.meta.main) {
  let result: BenchResult;
  try {
    result = await runBench(parseOptions(Deno.args));
  } catch (error) {
    console.error(`Bench failed: ${(error as Error).message}`);
    Deno.exit(1);
  }
  console.log(`\n${table(result)}`);
  if (result.options.outDir) {
    const path = await writeResult(result, result.options.outDir);
    console.log(`\nWrote ${path} and latest.json (${result.elapsed_s} s)`);
  }
  if (result.errors.length) {
    console.error(`\n${result.errors.length} phase(s) failed:\n  ${result.errors.join("\n  ")}`);
    Deno.exit(1);
  }
}
