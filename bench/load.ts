/**
 * Load generators: wrk with bench/wrk_unique.lua, or a fetch loop in this process when wrk is
 * missing. Both post the new-video fixture with a unique idempotency_key and video_id each time.
 */
import { type Processes, round } from "./procs.ts";

export const FIXTURE = new URL("../tests/fixtures/webhooks/new-video.json", import.meta.url);
export const WRK_SCRIPT = new URL("./wrk_unique.lua", import.meta.url).pathname;
const PLACEHOLDER = "@@ID@@";

/**
 * The fixture as a body template: idempotency_key and video_id carry the per-request id.
 * `callbacks: false` drops callback_url, for runs where workers would otherwise POST the outcome to
 * hooks.example.com (the bench stays on loopback).
 */
export async function bodyTemplate(options: { callbacks: boolean }): Promise<string> {
  const body = JSON.parse(await Deno.readTextFile(FIXTURE));
  body.idempotency_key = `bench-${PLACEHOLDER}`;
  body.video_id = `vid_${PLACEHOLDER}`;
  if (!options.callbacks) delete body.callback_url;
  return JSON.stringify(body);
}

export function fillTemplate(template: string, id: string): string {
  return template.replaceAll(PLACEHOLDER, id);
}

export interface LoadResult {
  generator: "wrk" | "deno-fetch";
  requests: number;
  duration_s: number;
  rps: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  max_ms: number;
  errors: { non2xx: number; socket: number; timeout: number; total: number };
}

export interface LoadOptions {
  url: string;
  connections: number;
  durationS: number;
  /** File holding the body template (see bodyTemplate). */
  templatePath: string;
  header: string;
  token: string;
  /** Makes ids unique across runs and points. */
  nonce: string;
  threads: number;
  timeoutS: number;
  logPath: string;
}

export async function hasWrk(): Promise<boolean> {
  try {
    const out = await new Deno.Command("wrk", { args: ["-v"], stdout: "null", stderr: "null" })
      .output();
    return out.code === 0 || out.code === 1;
  } catch {
    return false;
  }
}

/** One wrk run; its pid is handed to `onStart` (for CPU sampling). */
export async function runWrk(
  procs: Processes,
  options: LoadOptions,
  onStart?: (pid: number) => void,
): Promise<LoadResult> {
  const threads = Math.max(1, Math.min(options.threads, options.connections));
  const child = procs.spawn(
    "wrk",
    [
      "wrk",
      `-t${threads}`,
      `-c${options.connections}`,
      `-d${options.durationS}s`,
      `--timeout`,
      `${options.timeoutS}s`,
      "-s",
      WRK_SCRIPT,
      options.url,
      "--",
      options.templatePath,
      options.header,
      options.token,
      options.nonce,
    ],
    {},
    options.logPath,
  );
  onStart?.(child.pid);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const finished = await Promise.race([
    child.process.status.then(() => true),
    new Promise<false>((
      r,
    ) => (timer = setTimeout(() => r(false), (options.durationS + 30) * 1000))),
  ]);
  clearTimeout(timer);
  await procs.stop(child, 1_000);
  const output = await Deno.readTextFile(options.logPath);
  const line = output.split("\n").find((l) => l.startsWith("WRK_JSON "));
  if (!finished || !line) throw new Error(`wrk gave no result:\n${output.slice(-2_000)}`);
  const w = JSON.parse(line.slice("WRK_JSON ".length));
  const seconds = w.duration_us / 1e6;
  const socket = w.connect + w.read + w.write;
  return {
    generator: "wrk",
    requests: w.requests,
    duration_s: round(seconds, 2),
    rps: round(w.requests / seconds, 0),
    p50_ms: round(w.p50_us / 1000, 2),
    p90_ms: round(w.p90_us / 1000, 2),
    p99_ms: round(w.p99_us / 1000, 2),
    max_ms: round(w.max_us / 1000, 2),
    errors: {
      non2xx: w.status,
      socket,
      timeout: w.timeout,
      total: w.status + socket + w.timeout,
    },
  };
}

/** The fallback: `connections` fetch loops in this process for `durationS`. */
export async function runFetchLoad(options: LoadOptions): Promise<LoadResult> {
  const template = await Deno.readTextFile(options.templatePath);
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: options.connections });
  const latencies: number[] = [];
  const errors = { non2xx: 0, socket: 0, timeout: 0, total: 0 };
  let n = 0;
  const t0 = performance.now();
  const end = t0 + options.durationS * 1000;
  const loop = async (worker: number) => {
    while (performance.now() < end) {
      const id = `${options.nonce}-f${worker}-${n++}`;
      const started = performance.now();
      try {
        const res = await fetch(options.url, {
          method: "POST",
          client,
          headers: { "content-type": "application/json", [options.header]: options.token },
          body: fillTemplate(template, id),
          signal: AbortSignal.timeout(options.timeoutS * 1000),
        });
        await res.body?.cancel();
        latencies.push(performance.now() - started);
        if (res.status < 200 || res.status > 299) errors.non2xx++;
      } catch (error) {
        if ((error as Error).name === "TimeoutError") errors.timeout++;
        else errors.socket++;
      }
    }
  };
  await Promise.all(Array.from({ length: options.connections }, (_, i) => loop(i)));
  client.close();
  const seconds = (performance.now() - t0) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (q: number) =>
    latencies.length
      ? latencies[Math.min(latencies.length - 1, Math.ceil(q * latencies.length) - 1)]
      : 0;
  errors.total = errors.non2xx + errors.socket + errors.timeout;
  return {
    generator: "deno-fetch",
    requests: latencies.length,
    duration_s: round(seconds, 2),
    rps: round(latencies.length / seconds, 0),
    p50_ms: round(at(0.5), 2),
    p90_ms: round(at(0.9), 2),
    p99_ms: round(at(0.99), 2),
    max_ms: round(latencies.at(-1) ?? 0, 2),
    errors,
  };
}

/**
 * Posts `count` unique tasks as fast as `concurrency` keep-alive connections allow; returns the
 * accepted task ids' count and the failures. Used to enqueue the end-to-end workload.
 */
export async function postTasks(options: {
  url: string;
  count: number;
  concurrency: number;
  template: string;
  header: string;
  token: string;
  nonce: string;
  signal?: AbortSignal;
  /** Paced: the i-th request is sent no earlier than i/ratePerS seconds after the start. */
  ratePerS?: number;
}): Promise<{ accepted: number; failed: number; seconds: number }> {
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: options.concurrency });
  let next = 0;
  let accepted = 0;
  let failed = 0;
  const t0 = performance.now();
  const loop = async () => {
    while (next < options.count && !options.signal?.aborted) {
      const i = next++;
      const id = `${options.nonce}-${i}`;
      if (options.ratePerS) {
        const wait = t0 + (i * 1000) / options.ratePerS - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      try {
        const res = await fetch(options.url, {
          method: "POST",
          client,
          headers: { "content-type": "application/json", [options.header]: options.token },
          body: fillTemplate(options.template, id),
          signal: AbortSignal.timeout(10_000),
        });
        await res.body?.cancel();
        if (res.status === 202) accepted++;
        else failed++;
      } catch {
        failed++;
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: options.concurrency }, loop));
  } finally {
    client.close();
  }
  return { accepted, failed, seconds: (performance.now() - t0) / 1000 };
}
