/**
 * SSE: one server process with N concurrent Server-Sent Events clients while a worker completes
 * tasks at a steady rate (100/s by default).
 *
 * - N−K clients are idle followers: `GET /task/{id}/stream?follow=true` on tasks finished before
 *   the run (a page left open on a done task: heartbeats only). They cost the server memory and a
 *   place in the per-task index, no dispatch work per event.
 * - K clients (default 20) read `GET /events/stream` (every event, ADMIN_TOKEN): delivery latency
 *   of every event, from its append (the stream id's ms) to its receipt here.
 * - Each task posted during the run gets a follower of its own as soon as its 202 arrives
 *   (`/task/{id}/stream`, ending with the task): the per-task delivery latency, counting only
 *   events appended after that client's response began (older ones come from the catch-up read).
 *
 * Clients are raw TCP connections in this process (a GET, then the chunked body scanned for `id:`
 * lines), so 10,000 of them cost the bench little. Server RSS per client is the RSS with the
 * clients open minus the RSS before, divided by N. Ingest with 1,000 idle clients against
 * without is measured on a server with no worker, alternating runs of the same load.
 */
import { type BenchContext, logPath, newPrefix, serviceEnv } from "./context.ts";
import { bodyTemplate, fillTemplate, runFetchLoad, runWrk } from "./load.ts";
import { type Child, freePort, memoryOf, round, waitHttp, waitLog } from "./procs.ts";

export interface SseOptions {
  sseClients: number[];
  sseRate: number;
  sseSeconds: number;
  /** Clients on /events/stream among each count. */
  sseAllClients: number;
  /** Idle clients for the ingest comparison (0 skips it). */
  sseIngestClients: number;
  durationS: number;
  threads: number;
  timeoutS: number;
  useWrk: boolean;
}

const ADMIN = `sse-admin-${crypto.randomUUID()}`;

/** Latencies (ms) and what a set of raw SSE clients saw. */
class Receipts {
  latencies: number[] = [];
  events = 0;
  failed = 0;
  add(ms: number) {
    this.latencies.push(ms);
  }
  summary() {
    const sorted = [...this.latencies].sort((a, b) => a - b);
    const at = (q: number) =>
      sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : 0;
    return {
      events: sorted.length,
      p50_ms: round(at(0.5), 1),
      p99_ms: round(at(0.99), 1),
      max_ms: round(sorted.at(-1) ?? 0, 1),
    };
  }
}

/**
 * One raw SSE client: connects, sends the GET, and records `Date.now() − id ms` for each `id:` line
 * of an event appended after its response began. Resolves `opened` at the response's first bytes.
 */
function sseClient(
  port: number,
  path: string,
  headers: Record<string, string>,
  receipts: Receipts | null,
) {
  const opened = Promise.withResolvers<void>();
  let conn: Deno.TcpConn | null = null;
  let closed = false;
  const done = (async () => {
    try {
      conn = await Deno.connect({ hostname: "127.0.0.1", port });
      const head = [
        `GET ${path} HTTP/1.1`,
        `host: 127.0.0.1:${port}`,
        "accept: text/event-stream",
        ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
        "",
        "",
      ].join("\r\n");
      await conn.write(new TextEncoder().encode(head));
      const decoder = new TextDecoder();
      let since = 0;
      let rest = "";
      for await (const chunk of conn.readable) {
        const now = Date.now();
        if (!since) {
          since = now;
          opened.resolve();
        }
        const text = rest + decoder.decode(chunk, { stream: true });
        const lines = text.split("\n");
        rest = lines.pop() ?? "";
        for (const line of lines) {
          const id = /^id: (\d+)-\d+\r?$/.exec(line);
          if (!id || !receipts) continue;
          const ms = Number(id[1]);
          receipts.events++;
          if (ms >= since) receipts.add(now - ms);
        }
        if (lines.some((l) => l === "0\r") && rest === "") break;
      }
    } catch {
      if (!closed && receipts) receipts.failed++;
    } finally {
      opened.resolve();
      try {
        (conn as Deno.TcpConn | null)?.close();
      } catch {
        // Closed already.
      }
    }
  })();
  return {
    opened: opened.promise,
    done,
    close() {
      closed = true;
      try {
        (conn as Deno.TcpConn | null)?.close();
      } catch {
        // Closed already.
      }
    },
  };
}

type Client = ReturnType<typeof sseClient>;

/** Opens `count` clients, `batch` at a time, each waiting for its response to begin. */
async function openClients(count: number, open: (i: number) => Client, batch = 500) {
  const clients: Client[] = [];
  for (let i = 0; i < count; i += batch) {
    const some = Array.from({ length: Math.min(batch, count - i) }, (_, j) => open(i + j));
    await Promise.all(some.map((c) => c.opened));
    clients.push(...some);
  }
  return clients;
}

async function closeAll(clients: Client[]) {
  for (const c of clients) c.close();
  await Promise.all(clients.map((c) => c.done));
}

async function postOne(port: number, ctx: BenchContext, template: string, id: string) {
  const res = await fetch(`http://127.0.0.1:${port}/webhook`, {
    method: "POST",
    headers: { "content-type": "application/json", [ctx.tokenHeader]: ctx.token },
    body: fillTemplate(template, id),
  });
  const body = await res.json();
  if (res.status !== 202) throw new Error(`POST /webhook answered ${res.status}`);
  return body.task_id as string;
}

/** Posts `count` tasks at `ratePerS` over 16 keep-alive connections, handing each task id on. */
async function postPaced(ctx: BenchContext, options: {
  port: number;
  count: number;
  ratePerS: number;
  template: string;
  nonce: string;
  onAccepted(taskId: string): void;
}) {
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: 16 });
  let next = 0;
  let accepted = 0;
  const t0 = performance.now();
  const loop = async () => {
    while (next < options.count && !ctx.signal.aborted) {
      const i = next++;
      const wait = t0 + (i * 1000) / options.ratePerS - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      try {
        const res = await fetch(`http://127.0.0.1:${options.port}/webhook`, {
          method: "POST",
          client,
          headers: { "content-type": "application/json", [ctx.tokenHeader]: ctx.token },
          body: fillTemplate(options.template, `${options.nonce}-${i}`),
          signal: AbortSignal.timeout(10_000),
        });
        const body = await res.json();
        if (res.status === 202) {
          accepted++;
          options.onAccepted(body.task_id);
        }
      } catch {
        // Counted as not accepted.
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: 16 }, loop));
  } finally {
    client.close();
  }
  return { accepted, seconds: (performance.now() - t0) / 1000 };
}

/** Server RSS (MB) after a pause, the lowest of a few samples (GC noise). */
async function settledRss(pid: number): Promise<number> {
  let low = Infinity;
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 200));
    low = Math.min(low, memoryOf(pid)?.rssMb ?? Infinity);
  }
  return low;
}

async function clientsRun(
  ctx: BenchContext,
  options: SseOptions,
  count: number,
  template: string,
) {
  const prefix = newPrefix(ctx, `sse-${count}`);
  const port = freePort();
  const children: Child[] = [];
  try {
    const server = ctx.procs.service(
      `sse-server-${count}`,
      "serve",
      serviceEnv(ctx, prefix, {
        PORT: String(port),
        ADMIN_TOKEN: ADMIN,
        SSE_MAX_CLIENTS: String(count + options.sseRate * 10 + 1_000),
      }),
      logPath(ctx, `sse-server-${count}`),
    );
    children.push(server);
    const worker = ctx.procs.service(
      `sse-worker-${count}`,
      "worker",
      serviceEnv(ctx, prefix, { WORKER_CONCURRENCY: "200" }),
      logPath(ctx, `sse-worker-${count}`),
    );
    children.push(worker);
    await waitHttp(server, port);
    await waitLog(worker, "Consumers started");
    // Finished tasks for the idle followers, then the baseline RSS.
    const done = await Promise.all(
      Array.from({ length: 50 }, (_, i) => postOne(port, ctx, template, `${prefix}-idle-${i}`)),
    );
    await new Promise((r) => setTimeout(r, 2_000));
    const rssBefore = await settledRss(server.pid);
    const all = new Receipts();
    const perTask = new Receipts();
    const idle = Math.max(0, count - options.sseAllClients);
    const t0 = performance.now();
    const clients = await openClients(
      count,
      (i) =>
        i < idle
          ? sseClient(port, `/task/${done[i % done.length]}/stream?follow=true`, {}, null)
          : sseClient(port, "/events/stream", { authorization: `Bearer ${ADMIN}` }, all),
    );
    const openS = (performance.now() - t0) / 1000;
    const rssOpen = await settledRss(server.pid);
    // The measured window: tasks at sseRate/s, each with a follower of its own.
    const followers: Client[] = [];
    const posted = await postPaced(ctx, {
      port,
      count: options.sseRate * options.sseSeconds,
      ratePerS: options.sseRate,
      template,
      nonce: `${prefix}-load`,
      onAccepted: (taskId) => {
        followers.push(sseClient(port, `/task/${taskId}/stream`, {}, perTask));
      },
    });
    await new Promise((r) => setTimeout(r, 3_000));
    const rssLoaded = memoryOf(server.pid)?.rssMb ?? null;
    await closeAll(followers);
    await closeAll(clients);
    return {
      clients: count,
      idle_followers: idle,
      all_events_clients: count - idle,
      open_s: round(openS, 1),
      tasks_posted: posted.accepted,
      tasks_per_s: round(posted.accepted / posted.seconds, 0),
      all_events: { ...all.summary(), failed: all.failed },
      per_task: { ...perTask.summary(), failed: perTask.failed },
      server_rss_mb: { before: round(rssBefore, 1), open: round(rssOpen, 1), loaded: rssLoaded },
      rss_kb_per_client: round(((rssOpen - rssBefore) * 1024) / count, 1),
    };
  } finally {
    for (const child of children) await ctx.procs.stop(child);
  }
}

/** Ingest req/s on a server alone, without and with `idle` idle SSE clients, alternating twice. */
async function ingestRun(ctx: BenchContext, options: SseOptions, idle: number, template: string) {
  const prefix = newPrefix(ctx, "sse-ingest");
  const port = freePort();
  const server = ctx.procs.service(
    "sse-ingest-server",
    "serve",
    serviceEnv(ctx, prefix, { PORT: String(port), SSE_MAX_CLIENTS: String(idle + 100) }),
    logPath(ctx, "sse-ingest-server"),
  );
  try {
    await waitHttp(server, port);
    const task = await postOne(port, ctx, template, `${prefix}-idle`);
    const templatePath = `${ctx.tmpDir}/sse-template.json`;
    await Deno.writeTextFile(templatePath, template);
    let n = 0;
    const load = () => {
      const spec = {
        url: `http://127.0.0.1:${port}/webhook`,
        connections: 100,
        durationS: options.durationS,
        templatePath,
        header: ctx.tokenHeader,
        token: ctx.token,
        nonce: `${prefix}-${n++}`,
        threads: options.threads,
        timeoutS: options.timeoutS,
        logPath: logPath(ctx, `sse-ingest-${n}`),
      };
      return options.useWrk ? runWrk(ctx.procs, spec) : runFetchLoad(spec);
    };
    await load(); // warm-up
    const without: number[] = [];
    const withIdle: number[] = [];
    for (let round = 0; round < 2; round++) {
      without.push((await load()).rps);
      const clients = await openClients(
        idle,
        () => sseClient(port, `/task/${task}/stream?follow=true`, {}, null),
      );
      withIdle.push((await load()).rps);
      await closeAll(clients);
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    return {
      idle_clients: idle,
      connections: 100,
      rps_without: without,
      rps_with: withIdle,
      ratio: round(mean(withIdle) / mean(without), 3),
    };
  } finally {
    await ctx.procs.stop(server);
  }
}

/** Runs the SSE phase; deletes its keys and stops its processes whatever happens. */
export async function ssePhase(ctx: BenchContext, options: SseOptions) {
  const template = await bodyTemplate({ callbacks: false });
  const runs = [];
  for (const count of options.sseClients) {
    ctx.say(`  ${count} SSE clients at ${options.sseRate} tasks/s`);
    runs.push(await clientsRun(ctx, options, count, template));
  }
  const ingest = options.sseIngestClients > 0
    ? await ingestRun(ctx, options, options.sseIngestClients, template)
    : null;
  return { runs, ingest };
}
