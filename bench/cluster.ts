/**
 * `--phases cluster`: the service on a local Redis Cluster (3 masters, 3 replicas, AOF everysec,
 * all on this machine). Ingest requests/s with PARTITIONS 1, 3 and 6 against the minimal handler
 * on the same cluster, and what ACK_REPLICAS=1 costs; tasks/s end to end with each partition
 * count and 1 and 2 worker processes; Redis CPU per webhook and per task on the masters, which
 * gives the ceiling of one partition (a partition lives on one master, whose commands run on one
 * core); and Redis memory per task by kind of key, for the capacity plan in BENCHMARKS.md. One
 * plain Redis (AOF everysec too) runs the minimal handler, the server and one end-to-end run as
 * well, so the cluster is compared with one node under the same load. Redis CPU is read from
 * /proc with the servers' idle CPU (cluster bus, cron) measured first and subtracted.
 */
import { LocalCluster } from "../tests/support/redis_cluster.ts";
import { createKeys } from "../src/keys.ts";
import {
  callWithKey,
  closeRedis,
  connectRedis,
  type RedisClient,
  scanKeys,
} from "../src/redis/client.ts";
import { type BenchContext, logPath, MINIMAL_SERVER, newPrefix, serviceEnv } from "./context.ts";
import { type IngestPoint, type IngestServer, measure } from "./ingest.ts";
import { bodyTemplate, postTasks } from "./load.ts";
import {
  type Child,
  cpuSecondsOf,
  freePort,
  round,
  sampleProcesses,
  until,
  waitHttp,
  waitLog,
} from "./procs.ts";
import { spawnRedis } from "../src/dev/local_services.ts";

export interface ClusterBenchOptions {
  clusterPartitions: number[];
  clusterWorkers: number[];
  clusterTasks: number;
  clusterConnections: number;
  durationS: number;
  warmupS: number;
  threads: number;
  timeoutS: number;
  useWrk: boolean;
  concurrency: number;
  enqueueConcurrency: number;
  drainTimeoutS: number;
}

export interface ClusterIngestPoint extends IngestPoint {
  /** "cluster", or "single" (one Redis, for comparison). */
  redis: string;
  /** PARTITIONS, or null for the minimal handler. */
  partitions: number | null;
  ack_replicas: number;
  /** Redis CPU per request on the masters and on the replicas (idle CPU subtracted). */
  redis_master_cpu_us_per_request: number | null;
  redis_replica_cpu_us_per_request: number | null;
}

export interface ClusterE2eRun {
  redis: string;
  partitions: number;
  workers: number;
  tasks: number;
  enqueue_failed: number;
  enqueue_rps: number;
  drained: boolean;
  drain_s: number;
  tasks_per_s: number;
  /** CPU time of the worker processes and of the server per task. */
  worker_cpu_ms_per_task: number;
  server_cpu_ms_per_task: number;
  /** Redis CPU per task on all masters, the busiest master's share of a core, the replicas'. */
  redis_master_cpu_us_per_task: number;
  redis_busiest_master_cpu_pct: number;
  redis_replica_cpu_us_per_task: number;
}

export interface ClusterMemory {
  tasks: number;
  bytes_per_task_total: number;
  by_kind: Record<string, {
    keys: number;
    bytes_per_task: number;
    bytes_per_entry?: number;
    retention_days: number | null;
  }>;
}

/** The key of every partition of a prefix (partition 0's tag is `{prefix}`, k's `{prefix:k}`). */
const partitionKeys = (prefix: string, n: number) =>
  Array.from({ length: n }, (_, k) => createKeys(prefix, k));

/** Where the service runs in a measurement, and how much CPU its Redis servers used so far. */
interface Target {
  name: string;
  env: Record<string, string>;
  redis: RedisClient;
  /** CPU seconds of the data servers: masters (each one's too) and replicas. */
  cpu(): Promise<{ masters: number; replicas: number; perMaster: number[] }>;
  /** CPU seconds per second the servers use when idle (cluster bus, cron), to subtract. */
  idle: { masters: number; replicas: number };
}

function clusterTarget(cluster: LocalCluster, redis: RedisClient): Target {
  return {
    name: "cluster",
    env: cluster.env,
    redis,
    async cpu() {
      const roles = new Map((await cluster.topology()).map((n) => [n.port, n.role]));
      let masters = 0;
      let replicas = 0;
      const perMaster: number[] = [];
      for (const server of cluster.servers) {
        const cpu = cpuSecondsOf(server.child.pid) ?? 0;
        if (roles.get(server.port) === "master") {
          masters += cpu;
          perMaster.push(cpu);
        } else replicas += cpu;
      }
      return { masters, replicas, perMaster };
    },
    idle: { masters: 0, replicas: 0 },
  };
}

/** Measures `target.idle` over `seconds` of no load. */
async function measureIdle(target: Target, seconds = 3) {
  const before = await target.cpu();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const after = await target.cpu();
  target.idle = {
    masters: (after.masters - before.masters) / seconds,
    replicas: (after.replicas - before.replicas) / seconds,
  };
}

/** CPU the servers used between two readings `seconds` apart, less what they use idle. */
function cpuDelta(
  target: Target,
  before: Awaited<ReturnType<Target["cpu"]>>,
  after: Awaited<ReturnType<Target["cpu"]>>,
  seconds: number,
) {
  const idlePerMaster = target.idle.masters / Math.max(1, after.perMaster.length);
  return {
    masters: Math.max(0, after.masters - before.masters - target.idle.masters * seconds),
    replicas: Math.max(0, after.replicas - before.replicas - target.idle.replicas * seconds),
    busiestMaster: Math.max(
      ...after.perMaster.map((c, i) => c - (before.perMaster[i] ?? 0) - idlePerMaster * seconds),
    ),
  };
}

/** Which family a key belongs to, for memory per task (one name per key layout of keys.ts). */
function keyKind(key: string): string {
  const rest = key.replace(/^\{[^}]*\}:/, "");
  if (rest.startsWith("stream:")) return rest; // stream:webhooks, stream:events, stream:dead
  const view = /^view(@\d+)?:(task|video|stats:task|stats)/.exec(rest);
  if (view) return `view:${view[2]}`;
  return rest.split(":")[0];
}

/** MEMORY USAGE of every key of the prefix, summed per kind; streams also per entry. */
async function memoryByKind(redis: RedisClient, prefix: string, partitions: number) {
  const kinds = new Map<string, { keys: number; bytes: number; entries: number }>();
  for (const keys of partitionKeys(prefix, partitions)) {
    for await (const batch of scanKeys(redis, keys.pattern, 2_000)) {
      const sizes = await Promise.all(batch.map((key) =>
        Promise.all([
          callWithKey(redis, key, "MEMORY", "USAGE", key, "SAMPLES", "0"),
          key.includes(":stream:") ? redis.xlen(key) : Promise.resolve(0),
        ])
      ));
      batch.forEach((key, i) => {
        const kind = keyKind(key);
        const entry = kinds.get(kind) ?? { keys: 0, bytes: 0, entries: 0 };
        entry.keys++;
        entry.bytes += Number(sizes[i][0] ?? 0);
        entry.entries += sizes[i][1];
        kinds.set(kind, entry);
      });
    }
  }
  return kinds;
}

/** The default retention of each kind of key (config defaults), in days, for the plan. */
const RETENTION_DAYS: Record<string, number> = {
  "stream:webhooks": 7, // STREAM_RETENTION_S
  "stream:events": 7,
  "stream:dead": 7,
  idem: 1, // IDEMPOTENCY_TTL_S
  "idem-claim": 1,
};
const VIEW_RETENTION_DAYS = 30; // VIEW_RETENTION_S: views, timelines, revisions, stats per task

async function deletePrefixFrom(redis: RedisClient, prefix: string, partitions: number) {
  for (const keys of partitionKeys(prefix, partitions)) {
    for await (const batch of scanKeys(redis, keys.pattern, 2_000)) {
      await Promise.all(batch.map((key) => redis.unlink(key)));
    }
  }
}

export async function clusterPhase(ctx: BenchContext, options: ClusterBenchOptions) {
  ctx.say(
    "  starting a local Redis Cluster (3 masters, 3 replicas) and one Redis (both AOF everysec)",
  );
  const cluster = await LocalCluster.start({ nodeTimeoutMs: 5_000 });
  const singleDir = await Deno.makeTempDir({ prefix: "bench-single-redis-" });
  const singlePort = freePort();
  const children: Child[] = [];
  const start = (child: Child) => (children.push(child), child);
  let single: Deno.ChildProcess | null = null;
  const clients: RedisClient[] = [];
  try {
    single = await spawnRedis({ port: singlePort, dir: singleDir });
    const singlePid = single.pid;
    const singleUrl = `redis://127.0.0.1:${singlePort}`;
    const clusterRedis = connectRedis({
      cluster: [{ host: "127.0.0.1", port: cluster.servers[0].port }],
    });
    const singleRedis = connectRedis(singleUrl);
    clients.push(clusterRedis, singleRedis);
    const onCluster = clusterTarget(cluster, clusterRedis);
    const onSingle: Target = {
      name: "single",
      env: { REDIS_URL: singleUrl },
      redis: singleRedis,
      cpu: () => {
        const cpu = cpuSecondsOf(singlePid) ?? 0;
        return Promise.resolve({ masters: cpu, replicas: 0, perMaster: [cpu] });
      },
      idle: { masters: 0, replicas: 0 },
    };
    await Promise.all([measureIdle(onCluster), measureIdle(onSingle)]);
    const templatePath = `${ctx.tmpDir}/cluster-body.json`;
    await Deno.writeTextFile(templatePath, await bodyTemplate({ callbacks: false }));

    // --- Ingest: the minimal handler and the server with 1, 3, 6 partitions, then ACK_REPLICAS.
    const ingest: ClusterIngestPoint[] = [];
    const ingestRun = async (
      target: Target,
      partitions: number | null,
      ackReplicas: number,
    ) => {
      const name = `${target.name}-${partitions === null ? "minimal" : `p${partitions}`}${
        ackReplicas ? `-ack${ackReplicas}` : ""
      }`;
      const port = freePort();
      const prefix = newPrefix(ctx, `cluster-${name}`);
      const n = partitions ?? 1;
      const child = start(
        partitions === null
          ? ctx.procs.spawn(name, [Deno.execPath(), "run", "-A", MINIMAL_SERVER], {
            PORT: String(port),
            KEY_PREFIX: prefix,
            ...target.env,
          }, logPath(ctx, name))
          : ctx.procs.service(
            name,
            "serve",
            serviceEnv(ctx, prefix, {
              ...target.env,
              PORT: String(port),
              PARTITIONS: String(partitions),
              ACK_REPLICAS: String(ackReplicas),
            }),
            logPath(ctx, name),
          ),
      );
      await waitHttp(child, port);
      const streams = partitions === null
        ? [`{${prefix}}:bench:minimal`]
        : partitionKeys(prefix, n).map((k) => k.webhookStream);
      const server: IngestServer & { stored(): Promise<number> } = {
        name,
        child,
        port,
        clear: () => deletePrefixFrom(target.redis, prefix, n),
        stored: async () =>
          (await Promise.all(streams.map((s) => target.redis.xlen(s)))).reduce((a, b) => a + b, 0),
      };
      const before = await target.cpu();
      const t0 = performance.now();
      const point = await measure(ctx, server, options.clusterConnections, options, templatePath, {
        tag: "cluster-",
      });
      const seconds = (performance.now() - t0) / 1000;
      const cpu = cpuDelta(target, before, await target.cpu(), seconds);
      // The CPU spans warm-up and run at about the same rate: per request over both.
      const requests = point.rps * (options.warmupS + options.durationS);
      ingest.push({
        ...point,
        redis: target.name,
        partitions,
        ack_replicas: ackReplicas,
        redis_master_cpu_us_per_request: requests ? round(cpu.masters * 1e6 / requests, 1) : null,
        redis_replica_cpu_us_per_request: requests ? round(cpu.replicas * 1e6 / requests, 1) : null,
      });
      await ctx.procs.stop(child);
      await server.clear();
    };
    const top = Math.max(...options.clusterPartitions);
    await ingestRun(onSingle, null, 0);
    await ingestRun(onSingle, 1, 0);
    await ingestRun(onCluster, null, 0);
    for (const p of options.clusterPartitions) await ingestRun(onCluster, p, 0);
    for (const p of new Set([1, top])) await ingestRun(onCluster, p, 1);

    // --- End to end: every partition count with 1 and 2 worker processes (and one Redis).
    const e2e: ClusterE2eRun[] = [];
    let memory: ClusterMemory | null = null;
    const template = await bodyTemplate({ callbacks: false });
    const e2eRun = async (target: Target, partitions: number, workers: number) => {
      ctx.signal.throwIfAborted();
      const name = `${target.name}-e2e-p${partitions}-w${workers}`;
      const prefix = newPrefix(ctx, `cluster-${name}`);
      const port = freePort();
      const env = { ...target.env, PARTITIONS: String(partitions) };
      const server = start(ctx.procs.service(
        `${name}-server`,
        "serve",
        serviceEnv(ctx, prefix, { ...env, PORT: String(port) }),
        logPath(ctx, `${name}-server`),
      ));
      const workerChildren = Array.from({ length: workers }, (_, i) =>
        start(ctx.procs.service(
          `${name}-worker${i}`,
          "worker",
          serviceEnv(ctx, prefix, {
            ...env,
            WORKER_CONCURRENCY: String(options.concurrency),
            // A command that times out on a saturated machine leaves its entry pending until
            // reclaimed: 5 s instead of 60 keeps such a stall from dominating the drain time.
            CLAIM_IDLE_MS: "5000",
            SHUTDOWN_TIMEOUT_MS: "15000",
          }),
          logPath(ctx, `${name}-worker${i}`),
        )));
      await waitHttp(server, port);
      for (const w of workerChildren) await waitLog(w, "Consumers started");
      const finished = async () => {
        const stats = await (await fetch(`http://127.0.0.1:${port}/stats`)).json();
        return Number(stats.completed_tasks ?? 0) + Number(stats.failed_tasks ?? 0);
      };
      const pids = Object.fromEntries(workerChildren.map((w, i) => [`worker${i}`, w.pid]));
      const sampler = sampleProcesses({ server: server.pid, ...pids });
      const before = await target.cpu();
      const t0 = performance.now();
      const enqueue = await postTasks({
        url: `http://127.0.0.1:${port}/webhook`,
        count: options.clusterTasks,
        concurrency: options.enqueueConcurrency,
        template,
        header: ctx.tokenHeader,
        token: ctx.token,
        nonce: `${ctx.runPrefix}-${name}`,
        signal: ctx.signal,
      });
      let drained = true;
      await until(async () => (await finished()) >= enqueue.accepted, "the tasks to drain", {
        timeoutMs: options.drainTimeoutS * 1000,
        intervalMs: 100,
        signal: ctx.signal,
      }).catch((error) => {
        if (ctx.signal.aborted) throw error;
        drained = false;
      });
      const drainS = (performance.now() - t0) / 1000;
      const cpu = cpuDelta(target, before, await target.cpu(), drainS);
      const usage = sampler.stop();
      const tasks = enqueue.accepted;
      const workerCpu = workerChildren.reduce(
        (sum, _, i) => sum + (usage[`worker${i}`].cpu_pct ?? 0),
        0,
      );
      const result: ClusterE2eRun = {
        redis: target.name,
        partitions,
        workers,
        tasks,
        enqueue_failed: enqueue.failed,
        enqueue_rps: round(tasks / enqueue.seconds, 0),
        drained,
        drain_s: round(drainS, 2),
        tasks_per_s: round(tasks / drainS, 0),
        worker_cpu_ms_per_task: round(workerCpu * 10 * drainS / Math.max(1, tasks), 2),
        server_cpu_ms_per_task: round(
          (usage.server.cpu_pct ?? 0) * 10 * drainS / Math.max(1, tasks),
          2,
        ),
        redis_master_cpu_us_per_task: round(cpu.masters * 1e6 / tasks, 1),
        redis_busiest_master_cpu_pct: round(100 * cpu.busiestMaster / drainS, 0),
        redis_replica_cpu_us_per_task: round(cpu.replicas * 1e6 / tasks, 1),
      };
      e2e.push(result);
      ctx.say(
        `  ${target.name} PARTITIONS=${partitions}, ${workers} worker(s): ${tasks} tasks in ${result.drain_s} s = ${result.tasks_per_s} tasks/s; CPU per task: workers ${result.worker_cpu_ms_per_task} ms, Redis masters ${result.redis_master_cpu_us_per_task} µs (busiest master ${result.redis_busiest_master_cpu_pct}% of a core)`,
      );
      for (const w of workerChildren) await ctx.procs.stop(w, 20_000);
      await ctx.procs.stop(server);
      // Memory per task: from the run with the most partitions and workers, every key it left.
      if (
        target === onCluster && partitions === top &&
        workers === Math.max(...options.clusterWorkers)
      ) {
        const kinds = await memoryByKind(target.redis, prefix, partitions);
        const byKind = Object.fromEntries(
          [...kinds].map(([kind, k]) => [kind, {
            keys: k.keys,
            bytes_per_task: round(k.bytes / tasks, 0),
            ...(k.entries ? { bytes_per_entry: round(k.bytes / k.entries, 0) } : {}),
            retention_days: RETENTION_DAYS[kind] ??
              (kind === "view:stats" || kind === "partitions" ? null : VIEW_RETENTION_DAYS),
          }]),
        );
        const total = [...kinds.values()].reduce((sum, k) => sum + k.bytes, 0);
        memory = { tasks, bytes_per_task_total: round(total / tasks, 0), by_kind: byKind };
        ctx.say(`  memory: ${memory.bytes_per_task_total} bytes per task in Redis (all kinds)`);
      }
      await deletePrefixFrom(target.redis, prefix, partitions);
    };
    await e2eRun(onSingle, 1, 1);
    for (const partitions of options.clusterPartitions) {
      for (const workers of options.clusterWorkers) await e2eRun(onCluster, partitions, workers);
    }

    const ingestOf = (redis: string, p: number | null, ack = 0) =>
      ingest.find((x) => x.redis === redis && x.partitions === p && x.ack_replicas === ack);
    const clusterMinimal = ingestOf("cluster", null);
    const p1 = ingestOf("cluster", 1);
    const e2eP1 = e2e.filter((r) => r.redis === "cluster" && r.partitions === 1);
    const summary = {
      /** Server requests/s over the minimal handler on the same cluster. */
      ingest_ratio_vs_minimal: Object.fromEntries(
        options.clusterPartitions.map((p) => [
          p,
          clusterMinimal?.rps
            ? round((ingestOf("cluster", p)?.rps ?? 0) / clusterMinimal.rps, 2)
            : null,
        ]),
      ),
      /** The same on one Redis, for comparison. */
      single_ingest_ratio_vs_minimal: ingestOf("single", null)?.rps
        ? round((ingestOf("single", 1)?.rps ?? 0) / ingestOf("single", null)!.rps, 2)
        : null,
      /** Requests/s with ACK_REPLICAS=1 over without, at 1 and at the most partitions. */
      ack_replicas_rps_ratio: Object.fromEntries(
        [...new Set([1, top])].map((p) => [
          p,
          ingestOf("cluster", p)?.rps
            ? round((ingestOf("cluster", p, 1)?.rps ?? 0) / ingestOf("cluster", p)!.rps, 2)
            : null,
        ]),
      ),
      /**
       * A partition lives on one master, whose commands run on one core: its ceiling is a core
       * over the master CPU per webhook (ingest) and per task (end to end, PARTITIONS=1).
       */
      partition_ceiling_ingest_per_s: p1?.redis_master_cpu_us_per_request
        ? round(1e6 / p1.redis_master_cpu_us_per_request, 0)
        : null,
      partition_ceiling_tasks_per_s: e2eP1.length
        ? round(1e6 / Math.min(...e2eP1.map((r) => r.redis_master_cpu_us_per_task)), 0)
        : null,
    };
    ctx.say(`  summary: ${JSON.stringify(summary)}`);
    return {
      topology:
        "3 masters + 3 replicas on this machine (AOF everysec, cluster-node-timeout 5 s); one Redis (AOF everysec) for comparison",
      connections: options.clusterConnections,
      idle_cpu: { cluster: onCluster.idle, single: onSingle.idle },
      ingest,
      e2e,
      memory: memory as ClusterMemory | null,
      summary,
    };
  } finally {
    for (const child of children) await ctx.procs.stop(child, 5_000);
    await Promise.all(clients.map(closeRedis));
    await cluster.stop();
    if (single) {
      try {
        single.kill("SIGKILL");
      } catch {
        // Gone.
      }
      await single.status;
    }
    await Deno.remove(singleDir, { recursive: true }).catch(() => {});
  }
}
