/**
 * Where a task's CPU goes, stage by stage, on a Redis of its own (so INFO COMMANDSTATS holds only
 * this run): 1. ingest (a server takes `--tasks` POSTs), 2. the pipeline (one worker with
 * CONSUMERS=tasks,scenes,callbacks drains them), 3. the projections (one worker with
 * CONSUMERS=projections folds the whole log). Each stage reports the CPU per task of the process
 * doing it and of Redis, and Redis's own time per command.
 *
 *   deno run -A bench/cost.ts [--tasks 10000] [--concurrency 1000] [--log-level info]
 *     [--profile pipeline|projections]
 */
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { statsKeys } from "../src/projections/stats/view.ts";
import { createKeys } from "../src/keys.ts";
import { groupInfo } from "../src/redis/streams.ts";
import { bodyTemplate, postTasks } from "./load.ts";
import { cpuSecondsOf, freePort, Processes, round, until, waitHttp, waitLog } from "./procs.ts";
import { inspectArgs, inspector, summariseProfile } from "./profile.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    tasks: { type: "string", default: "10000" },
    concurrency: { type: "string", default: "1000" },
    top: { type: "string", default: "12" },
    /** LOG_LEVEL of the service processes (the end-to-end bench runs them at info). */
    "log-level": { type: "string", default: "warn" },
    /** Writes a V8 CPU profile of that stage's process (pipeline or projections) and its summary. */
    profile: { type: "string" },
  },
});
const tasks = Number(values.tasks);
const top = Number(values.top);

const procs = new Processes();
const tmp = await Deno.makeTempDir({ prefix: "bench-cost-" });
const redisPort = freePort();
const redisServer = new Deno.Command("redis-server", {
  args: ["--port", String(redisPort), "--save", "", "--appendonly", "no", "--dir", tmp],
  stdout: "null",
  stderr: "null",
}).spawn();
const REDIS_URL = `redis://127.0.0.1:${redisPort}`;
const redis = new Redis(REDIS_URL, {
  lazyConnect: true,
  maxRetriesPerRequest: 1,
  retryStrategy: () => 50,
});
for (let i = 0; i < 100; i++) {
  try {
    await redis.connect();
    break;
  } catch {
    await new Promise((r) => setTimeout(r, 50));
  }
}
const redisPid = Number(
  String(await redis.info("server")).match(/process_id:(\d+)/)?.[1],
);

const env = (extra: Record<string, string>) => ({
  REDIS_URL,
  KEY_PREFIX: "cost",
  HOST: "127.0.0.1",
  PROVIDER_MODE: "offline",
  OFFLINE_LATENCY_MS: "0",
  WEBHOOK_TOKEN: "cost-token-0123456789",
  RATE_LIMIT_PER_MINUTE: "100000000",
  LOG_LEVEL: values["log-level"]!,
  WORKER_CONCURRENCY: values.concurrency!,
  ...extra,
});

type Stats = Map<string, { calls: number; usec: number }>;
async function commandStats(): Promise<Stats> {
  const out: Stats = new Map();
  for (const line of String(await redis.info("commandstats")).split("\n")) {
    const m = line.match(/^cmdstat_(\S+):calls=(\d+),usec=(\d+)/);
    if (m) out.set(m[1], { calls: Number(m[2]), usec: Number(m[3]) });
  }
  return out;
}

/** Starts a worker for a stage; with `--profile <stage>` it is CPU-profiled until `done`. */
async function worker(name: string, consumers: string, done: () => Promise<unknown>) {
  const log = `${tmp}/${name}.log`;
  if (values.profile !== name) {
    const child = procs.service(name, "worker", env({ CONSUMERS: consumers }), log);
    await done();
    return child.pid;
  }
  const port = freePort();
  const child = procs.spawn(
    name,
    inspectArgs(port, "worker"),
    env({ CONSUMERS: consumers, LOG_LEVEL: "info" }),
    log,
  );
  await waitLog(child, "Consumers started");
  const session = await inspector(port);
  const { profile } = await session.profile(done);
  session.close();
  const file = `bench/results/cost-${name}.cpuprofile`;
  await Deno.writeTextFile(file, JSON.stringify(profile));
  const summary = summariseProfile(profile, 40);
  console.log(`profile of ${name} in ${file}`);
  for (const row of summary.self) console.log(`  self ${row.pct}% ${row.name}`);
  for (const row of summary.areas) console.log(`  area ${row.pct}% ${row.name}`);
  return child.pid;
}

/** `run` returns the pids doing the stage: started by it (CPU counted from their start) or not. */
async function stage(name: string, run: () => Promise<number[]>) {
  await redis.config("RESETSTAT");
  const r0 = cpuSecondsOf(redisPid)!;
  const before = new Map(started.map((pid) => [pid, cpuSecondsOf(pid) ?? 0]));
  const t0 = performance.now();
  const pids = await run();
  const c0 = pids.map((pid) => before.get(pid) ?? 0);
  const seconds = (performance.now() - t0) / 1000;
  const redisCpu = cpuSecondsOf(redisPid)! - r0;
  const stats = await commandStats();
  const cpu = pids.map((pid, i) => (cpuSecondsOf(pid) ?? NaN) - c0[i]);
  const perTask = (s: number) => round((s * 1000) / tasks, 3);
  console.log(
    `${name}: ${round(seconds, 2)} s (${round(tasks / seconds, 0)} tasks/s); process CPU ms/task ${
      cpu.map(perTask).join(" + ")
    }; Redis CPU ms/task ${perTask(redisCpu)}`,
  );
  const rows = [...stats].sort(([, a], [, b]) => b.usec - a.usec).slice(0, top);
  for (const [command, { calls, usec }] of rows) {
    console.log(
      `  ${command.padEnd(22)} ${round(calls / tasks, 2).toString().padStart(7)} calls/task ${
        round(usec / tasks, 1).toString().padStart(7)
      } µs/task`,
    );
  }
}

const keys = createKeys("cost");
const started: number[] = [];
const completed = () => redis.hget(statsKeys(keys.views(0).prefix).counters, "completed_tasks");
try {
  const port = freePort();
  const server = procs.service("server", "serve", env({ PORT: String(port) }), `${tmp}/server.log`);
  await waitHttp(server, port);
  started.push(server.pid);
  await stage("ingest", async () => {
    const posted = await postTasks({
      url: `http://127.0.0.1:${port}/webhook`,
      count: tasks,
      concurrency: 64,
      template: await bodyTemplate({ callbacks: false }),
      header: "x-webhook-token",
      token: "cost-token-0123456789",
      nonce: `cost-${Date.now()}`,
    });
    if (posted.accepted !== tasks) throw new Error(`only ${posted.accepted} of ${tasks} accepted`);
    return [server.pid];
  });
  await procs.stop(server, 5_000);

  await stage("pipeline", async () => [
    await worker("pipeline", "tasks,scenes,callbacks", () =>
      until(
        async () => {
          // Every work entry taken and every scenes.generated stored: both groups hold nothing.
          const groups = [
            ...(await groupInfo(redis, keys.webhookStream)).filter((g) => g.name === "workers"),
            ...(await groupInfo(redis, keys.eventStream)).filter((g) => g.name === "scene-sink"),
          ];
          return groups.length === 2 && groups.every((g) => g.pending === 0 && g.lag === 0);
        },
        "the pipeline to drain",
        { timeoutMs: 300_000, intervalMs: 100 },
      )),
  ]);
  await procs.stopAll();

  await stage("projections", async () => [
    await worker(
      "projections",
      "projections",
      () =>
        until(async () => Number(await completed()) >= tasks, "the projections", {
          timeoutMs: 300_000,
          intervalMs: 100,
        }),
    ),
  ]);
  console.log(`events per task: ${round((await redis.xlen(keys.eventStream)) / tasks, 2)}`);
} finally {
  await procs.stopAll();
  redis.disconnect();
  redisServer.kill("SIGKILL");
  await redisServer.status;
  await Deno.remove(tmp, { recursive: true });
}
