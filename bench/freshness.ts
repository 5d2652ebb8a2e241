/**
 * Status freshness under a burst: how long after a task's `task.completed` is appended does GET
 * /task/{id} answer "completed"? The probe tails the event stream (XREAD, its own connection),
 * takes every `every`-th `task.completed`, and polls that task's GET every `pollMs` until it says
 * completed. Latency = the answer's arrival − the event's append time (its stream id's ms), so
 * the probe's own detection delay counts against the server, never for it.
 *
 * The bench runs the probe in a process of its own (`startFreshnessProbeProcess`): in the bench's
 * process its reads and GETs would wait behind the burst's own POST loop, which is the load
 * generator's delay, not the service's.
 */
import { idTime } from "../src/events.ts";
import { connect } from "./redis_tools.ts";
import { round } from "./procs.ts";

export interface FreshnessSummary {
  /** Sampled completions answered "completed" within the timeout. */
  samples: number;
  /** Sampled completions never answered "completed" within `timeoutMs`. */
  timed_out: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
  /** GET requests the probe sent. */
  requests: number;
  /** GETs that answered something other than completed (stale, or an error). */
  not_completed: number;
  /** Of the latency, the probe's own share: append → the probe read the event (p50, p99). */
  detect_p50_ms: number;
  detect_p99_ms: number;
  /** The server's share: the probe read the event → GET answered completed (p50, p99). */
  answer_p50_ms: number;
  answer_p99_ms: number;
}

export function startFreshnessProbe(options: {
  eventStream: string;
  /** `http://host:port`: GET {base}/task/{id}. */
  base: string;
  every?: number;
  pollMs?: number;
  timeoutMs?: number;
}) {
  const every = options.every ?? 100;
  const pollMs = options.pollMs ?? 10;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const redis = connect("bench-freshness");
  const latencies: number[] = [];
  const polls: Promise<void>[] = [];
  let timedOut = 0;
  let requests = 0;
  let notCompleted = 0;
  const detects: number[] = [];
  const answers: number[] = [];
  let running = true;
  let seen = 0;

  const poll = async (taskId: string, appendedMs: number) => {
    const deadline = appendedMs + timeoutMs;
    const seenAt = Date.now();
    detects.push(seenAt - appendedMs);
    while (Date.now() < deadline) {
      requests++;
      const res = await fetch(`${options.base}/task/${taskId}`).catch(() => null);
      const view = res?.ok ? await res.json() : await res?.body?.cancel();
      if (view?.status === "completed") {
        latencies.push(Date.now() - appendedMs);
        answers.push(Date.now() - seenAt);
        return;
      }
      notCompleted++;
      await new Promise((r) => setTimeout(r, pollMs));
    }
    timedOut++;
  };

  // Tails from the stream's last entry when the probe starts (`ready` resolves then): an event
  // appended after `ready` is seen however late the first read goes out.
  const ready = Promise.withResolvers<void>();
  const tail = (async () => {
    const [newest] = await redis.xrevrange(options.eventStream, "+", "-", "COUNT", 1)
      .catch(() => []);
    let cursor = newest?.[0] ?? "0-0";
    ready.resolve();
    while (running) {
      const reply = await redis.xread(
        "COUNT",
        2_000,
        "BLOCK",
        100,
        "STREAMS",
        options.eventStream,
        cursor,
      )
        .catch(() => null);
      for (const [, entries] of reply ?? []) {
        for (const [id, fields] of entries) {
          cursor = id;
          const type = fields[fields.indexOf("type") + 1];
          if (type !== "task.completed" || seen++ % every !== 0) continue;
          polls.push(poll(fields[fields.indexOf("task_id") + 1], idTime(id)));
        }
      }
    }
  })();

  return {
    ready: ready.promise,
    async stop(): Promise<FreshnessSummary> {
      running = false;
      await tail;
      await Promise.all(polls);
      redis.disconnect();
      const sorted = latencies.sort((a, b) => a - b);
      const quantile = (values: number[], q: number) => {
        const v = [...values].sort((a, b) => a - b);
        return v.length ? v[Math.min(v.length - 1, Math.floor(q * v.length))] : 0;
      };
      const at = (q: number) => quantile(sorted, q);
      return {
        samples: sorted.length,
        timed_out: timedOut,
        p50_ms: round(at(0.5), 0),
        p99_ms: round(at(0.99), 0),
        max_ms: round(sorted.at(-1) ?? 0, 0),
        requests,
        not_completed: notCompleted,
        detect_p50_ms: round(quantile(detects, 0.5), 0),
        detect_p99_ms: round(quantile(detects, 0.99), 0),
        answer_p50_ms: round(quantile(answers, 0.5), 0),
        answer_p99_ms: round(quantile(answers, 0.99), 0),
      };
    },
  };
}

/**
 * Runs the probe in a child process (this module as its main): same options and summary. Resolves
 * once the child tails the stream (it says "ready"); the child stops when its stdin closes and
 * prints the summary as JSON on stdout.
 */
export async function startFreshnessProbeProcess(options: {
  eventStream: string;
  base: string;
  every?: number;
  redisUrl: string;
}) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      options.eventStream,
      options.base,
      String(options.every ?? 100),
    ],
    env: { REDIS_URL: options.redisUrl },
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await lines.read();
    if (done) throw new Error("the freshness probe exited before it was ready");
    text += value;
  }
  return {
    async stop(): Promise<FreshnessSummary> {
      await child.stdin.close();
      while (true) {
        const { value, done } = await lines.read();
        if (done) break;
        text += value;
      }
      const { code } = await child.status;
      if (code !== 0) throw new Error(`the freshness probe exited with ${code}`);
      return JSON.parse(text.slice(text.indexOf("\n") + 1)) as FreshnessSummary;
    },
  };
}

if (import.meta.main) {
  const [eventStream, base, every] = Deno.args;
  const probe = startFreshnessProbe({ eventStream, base, every: Number(every) });
  await probe.ready;
  console.log("ready");
  // Runs until the parent closes stdin.
  for await (const _ of Deno.stdin.readable) { /* nothing is sent */ }
  console.log(JSON.stringify(await probe.stop()));
}
