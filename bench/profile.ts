/**
 * Where the time goes: Redis commands per request and per task (MONITOR on the bench's prefix,
 * untimed workloads), and a V8 CPU profile of the real server under load (inspector protocol).
 */
import { createKeys } from "../src/keys.ts";
import { statsKeys } from "../src/projections/stats/view.ts";
import { type BenchContext, logPath, MINIMAL_SERVER, newPrefix, serviceEnv } from "./context.ts";
import { bodyTemplate, postTasks, runWrk } from "./load.ts";
import { type Child, freePort, MAIN, ROOT, round, until, waitHttp, waitLog } from "./procs.ts";
import { countCommands, deletePrefix, perUnit, REDIS_URL } from "./redis_tools.ts";

/** Redis commands per webhook (real server and minimal handler) and per task end to end. */
export async function redisCommandsPhase(ctx: BenchContext, requests: number) {
  const out: Record<string, unknown> = {};
  const withCallbacks = await bodyTemplate({ callbacks: true });
  const withoutCallbacks = await bodyTemplate({ callbacks: false });
  for (const kind of ["minimal", "real", "pipeline"] as const) {
    const prefix = newPrefix(ctx, `profile-${kind}`);
    const port = freePort();
    const children: Child[] = [];
    try {
      children.push(
        kind === "minimal"
          ? ctx.procs.spawn(kind, [Deno.execPath(), "run", "-A", MINIMAL_SERVER], {
            PORT: String(port),
            KEY_PREFIX: prefix,
            REDIS_URL,
          }, logPath(ctx, `profile-${kind}`))
          : ctx.procs.service(
            `profile-${kind}-server`,
            "serve",
            serviceEnv(ctx, prefix, { PORT: String(port) }),
            logPath(ctx, `profile-${kind}-server`),
          ),
      );
      const server = children[0];
      if (kind === "pipeline") {
        const worker = ctx.procs.service(
          "profile-worker",
          "worker",
          serviceEnv(ctx, prefix),
          logPath(ctx, "profile-worker"),
        );
        children.push(worker);
        await waitLog(worker, "Consumers started");
      }
      await waitHttp(server, port);
      const stats = statsKeys(createKeys(prefix).views(0).prefix).counters;
      const counts = await countCommands(ctx.redis, prefix, async () => {
        const sent = await postTasks({
          url: `http://127.0.0.1:${port}/webhook`,
          count: requests,
          concurrency: 10,
          template: kind === "pipeline" ? withoutCallbacks : withCallbacks,
          header: ctx.tokenHeader,
          token: ctx.token,
          nonce: `${ctx.runPrefix}-profile-${kind}`,
        });
        if (sent.failed) throw new Error(`${sent.failed} profile requests failed (${kind})`);
        if (kind === "pipeline") {
          await until(
            async () => Number(await ctx.redis.hget(stats, "completed_tasks")) >= requests,
            "the profiled tasks to complete",
            { timeoutMs: 60_000 },
          );
        }
      });
      out[kind === "pipeline" ? "per_task" : `per_request_${kind}`] = perUnit(counts, requests);
    } finally {
      for (const c of children) await ctx.procs.stop(c, 5_000);
      await deletePrefix(ctx.redis, prefix);
    }
  }
  return out;
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

/** Groups a script URL: an npm package, a file of this repository, Deno's runtime, or V8. */
export function area(url: string, fn: string): string {
  if (!url) return fn.startsWith("(") ? fn : "(native)";
  const npm = url.match(/node_modules\/(?:\.deno\/)?(@[^/@]+\/[^/@]+|[^/@]+)/);
  if (npm) return `npm:${npm[1].replace(/\+/, "/")}`;
  if (url.startsWith("ext:") || url.startsWith("node:")) return `deno:${url.split("/")[0]}`;
  const local = url.replace(/^file:\/\//, "").replace(ROOT, "");
  return local.startsWith("/") ? url : local;
}

/** Self and inclusive sample shares per function and self share per area, from a .cpuprofile. */
export function summariseProfile(profile: { nodes: ProfileNode[] }, top = 25) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const total = profile.nodes.reduce((s, n) => s + (n.hitCount ?? 0), 0) || 1;
  const key = (n: ProfileNode) => {
    const f = n.callFrame;
    const where = area(f.url, f.functionName);
    return `${f.functionName || "(anonymous)"} ${where}${f.url ? `:${f.lineNumber + 1}` : ""}`;
  };
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const areas = new Map<string, number>();
  // Depth-first from the root; a function's inclusive time counts once even when it recurses.
  const walk = (id: number, active: Map<string, number>): number => {
    const node = byId.get(id)!;
    const k = key(node);
    const hits = node.hitCount ?? 0;
    self.set(k, (self.get(k) ?? 0) + hits);
    const a = area(node.callFrame.url, node.callFrame.functionName);
    areas.set(a, (areas.get(a) ?? 0) + hits);
    active.set(k, (active.get(k) ?? 0) + 1);
    let sum = hits;
    for (const child of node.children ?? []) sum += walk(child, active);
    active.set(k, active.get(k)! - 1);
    if (active.get(k) === 0) inclusive.set(k, (inclusive.get(k) ?? 0) + sum);
    return sum;
  };
  walk(profile.nodes[0].id, new Map());
  const pct = (m: Map<string, number>, n: number) =>
    [...m].sort(([, a], [, b]) => b - a).slice(0, n).map(([name, hits]) => ({
      name,
      pct: round((100 * hits) / total, 1),
    }));
  return {
    samples: total,
    self: pct(self, top),
    inclusive: pct(inclusive, top * 2),
    areas: pct(areas, 20),
  };
}

/** Connects to a child's V8 inspector; `profile(work)` samples its CPU while `work` runs. */
export async function inspector(port: number) {
  const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
  const ws = new WebSocket(targets[0].webSocketDebuggerUrl);
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  let next = 0;
  const waiting = new Map<number, (value: Record<string, unknown>) => void>();
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.id !== undefined) waiting.get(msg.id)?.(msg.result ?? {});
  };
  const call = (method: string, params: Record<string, unknown> = {}) =>
    new Promise<Record<string, unknown>>((resolve) => {
      const id = ++next;
      waiting.set(id, resolve);
      ws.send(JSON.stringify({ id, method, params }));
    });
  return {
    async profile<T>(
      work: () => Promise<T>,
    ): Promise<{ result: T; profile: { nodes: ProfileNode[] } }> {
      await call("Profiler.enable");
      await call("Profiler.setSamplingInterval", { interval: 200 });
      await call("Profiler.start");
      const result = await work();
      const { profile } = await call("Profiler.stop") as { profile: { nodes: ProfileNode[] } };
      return { result, profile };
    },
    close: () => ws.close(),
  };
}

export const inspectArgs = (port: number, role: "serve" | "worker") => [
  Deno.execPath(),
  "run",
  "-A",
  `--inspect=127.0.0.1:${port}`,
  MAIN,
  role,
];

/** A CPU profile of the real server (every check on) while wrk runs `connections` for `durationS`. */
export async function cpuProfilePhase(
  ctx: BenchContext,
  options: { connections: number; durationS: number; threads: number },
) {
  const prefix = newPrefix(ctx, "cpuprofile");
  const port = freePort();
  const inspect = freePort();
  const server = ctx.procs.spawn(
    "cpuprofile-server",
    inspectArgs(inspect, "serve"),
    serviceEnv(ctx, prefix, { PORT: String(port) }),
    logPath(ctx, "cpuprofile-server"),
  );
  const templatePath = `${ctx.tmpDir}/body-profile.json`;
  await Deno.writeTextFile(templatePath, await bodyTemplate({ callbacks: true }));
  let session: Awaited<ReturnType<typeof inspector>> | null = null;
  try {
    await waitHttp(server, port);
    session = await inspector(inspect);
    const { result: load, profile } = await session.profile(() =>
      runWrk(ctx.procs, {
        url: `http://127.0.0.1:${port}/webhook`,
        connections: options.connections,
        durationS: options.durationS,
        templatePath,
        header: ctx.tokenHeader,
        token: ctx.token,
        nonce: `${ctx.runPrefix}-cpuprofile`,
        threads: options.threads,
        timeoutS: 5,
        logPath: logPath(ctx, "wrk-cpuprofile"),
      })
    );
    await Deno.writeTextFile(`${ctx.tmpDir}/server.cpuprofile`, JSON.stringify(profile));
    ctx.say(`  server CPU profile under ${options.connections} connections (${load.rps} req/s)`);
    return {
      connections: options.connections,
      rps_while_profiling: load.rps,
      ...summariseProfile(profile),
    };
  } finally {
    session?.close();
    await ctx.procs.stop(server, 5_000);
    await deletePrefix(ctx.redis, prefix);
  }
}

/** A CPU profile of one worker (no provider latency) draining `tasks` tasks. */
export async function workerCpuProfilePhase(ctx: BenchContext, tasks: number, concurrency: number) {
  const prefix = newPrefix(ctx, "cpuprofile-worker");
  const port = freePort();
  const inspect = freePort();
  const children = [
    ctx.procs.service(
      "cpuprofile-w-server",
      "serve",
      serviceEnv(ctx, prefix, { PORT: String(port) }),
      logPath(ctx, "cpuprofile-w-server"),
    ),
    ctx.procs.spawn(
      "cpuprofile-worker",
      inspectArgs(inspect, "worker"),
      serviceEnv(ctx, prefix, { WORKER_CONCURRENCY: String(concurrency) }),
      logPath(ctx, "cpuprofile-worker"),
    ),
  ];
  let session: Awaited<ReturnType<typeof inspector>> | null = null;
  try {
    await waitHttp(children[0], port);
    await waitLog(children[1], "Consumers started");
    session = await inspector(inspect);
    const stats = statsKeys(createKeys(prefix).views(0).prefix).counters;
    const t0 = performance.now();
    const { profile } = await session.profile(async () => {
      await postTasks({
        url: `http://127.0.0.1:${port}/webhook`,
        count: tasks,
        concurrency: 32,
        template: await bodyTemplate({ callbacks: false }),
        header: ctx.tokenHeader,
        token: ctx.token,
        nonce: `${ctx.runPrefix}-cpuprofile-worker`,
      });
      await until(
        async () => Number(await ctx.redis.hget(stats, "completed_tasks")) >= tasks,
        "the profiled tasks to complete",
        { timeoutMs: 120_000 },
      );
    });
    const seconds = (performance.now() - t0) / 1000;
    await Deno.writeTextFile(`${ctx.tmpDir}/worker.cpuprofile`, JSON.stringify(profile));
    ctx.say(`  worker CPU profile over ${tasks} tasks (${round(tasks / seconds, 0)} tasks/s)`);
    return { tasks, tasks_per_s: round(tasks / seconds, 0), ...summariseProfile(profile) };
  } finally {
    session?.close();
    for (const c of children) await ctx.procs.stop(c, 5_000);
    await deletePrefix(ctx.redis, prefix);
  }
}
