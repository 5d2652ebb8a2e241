/**
 * Child processes of the bench (servers, workers, wrk) and what /proc says about them. Every
 * process is registered here and stopped by `stopAll`, which the bench runs in `finally` and on
 * Ctrl-C.
 */

export const ROOT = new URL("../", import.meta.url).pathname;
export const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Variables passed through to children; everything else comes from the bench explicitly. */
const PASS_ENV = ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR", "LANG", "NO_COLOR"];

/**
 * The environment a child inherits: only what Deno and the shell need, so settings of the machine
 * running the bench or the tests (REDIS_URL, FAL_KEY, CONSUMERS...) never reach it.
 */
export function inheritedEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const key of PASS_ENV) {
    const value = Deno.env.get(key);
    if (value !== undefined) env[key] = value;
  }
  return env;
}

export interface Child {
  name: string;
  pid: number;
  process: Deno.ChildProcess;
  /** stdout and stderr, appended (JSON log lines for the service). */
  logPath: string;
}

export class Processes {
  readonly #children = new Set<Child>();

  /**
   * Starts `command` with only `env` (plus PATH, HOME and Deno's cache variables), its output
   * appended to `logPath` by the shell's redirection (exec keeps the pid: no process in between).
   */
  spawn(name: string, command: string[], env: Record<string, string>, logPath: string): Child {
    const process = new Deno.Command("sh", {
      args: ["-c", 'exec "$@" >>"$BENCH_LOG_PATH" 2>&1', "sh", ...command],
      env: { ...inheritedEnv(), ...env, BENCH_LOG_PATH: logPath },
      clearEnv: true,
      cwd: ROOT,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const child = { name, pid: process.pid, process, logPath };
    this.#children.add(child);
    return child;
  }

  /** A `deno run -A [denoArgs] main.ts <role>` child. */
  service(
    name: string,
    role: "serve" | "worker",
    env: Record<string, string>,
    logPath: string,
    denoArgs: string[] = [],
  ) {
    return this.spawn(name, [Deno.execPath(), "run", "-A", ...denoArgs, MAIN, role], env, logPath);
  }

  /** Signals a child and waits for it to exit; SIGKILL after `graceMs`. Never throws. */
  async stop(child: Child, graceMs = 10_000): Promise<Deno.CommandStatus | null> {
    if (!this.#children.has(child)) return null;
    try {
      child.process.kill("SIGTERM");
    } catch {
      // Already gone.
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const killed = new Promise<null>((resolve) => {
      timer = setTimeout(() => {
        try {
          child.process.kill("SIGKILL");
        } catch {
          // Already gone.
        }
        resolve(null);
      }, graceMs);
    });
    const status = await Promise.race([child.process.status, killed]);
    clearTimeout(timer);
    await child.process.status;
    this.#children.delete(child);
    return status;
  }

  async stopAll(graceMs = 5_000): Promise<void> {
    await Promise.all([...this.#children].map((c) => this.stop(c, graceMs)));
  }

  get running(): number {
    return this.#children.size;
  }
}

/** VmRSS and VmHWM (peak) of a process in MB, or null once it is gone. */
export function memoryOf(pid: number): { rssMb: number; hwmMb: number } | null {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const kb = (field: string) =>
      Number(status.match(new RegExp(`^${field}:\\s+(\\d+)`, "m"))?.[1]);
    return { rssMb: kb("VmRSS") / 1024, hwmMb: kb("VmHWM") / 1024 };
  } catch {
    return null;
  }
}

const TICKS_PER_S = 100;

/** User + system CPU seconds a process has used, or null once it is gone. */
export function cpuSecondsOf(pid: number): number | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // Fields after the command name, which is in parentheses and may contain spaces.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_S;
  } catch {
    return null;
  }
}

/**
 * Samples memory of some processes every `intervalMs` and their CPU time at start and end.
 * `stop()` returns, per name, the peak RSS seen (VmHWM included) and the CPU share used.
 */
export function sampleProcesses(pids: Record<string, number>, intervalMs = 200) {
  const started = performance.now();
  const cpu0: Record<string, number | null> = {};
  const peak: Record<string, number> = {};
  for (const [name, pid] of Object.entries(pids)) {
    cpu0[name] = cpuSecondsOf(pid);
    peak[name] = 0;
  }
  const sample = () => {
    for (const [name, pid] of Object.entries(pids)) {
      const m = memoryOf(pid);
      if (m) peak[name] = Math.max(peak[name], m.rssMb, m.hwmMb);
    }
  };
  sample();
  const timer = setInterval(sample, intervalMs);
  let result: Record<string, { peak_rss_mb: number; cpu_pct: number | null }> | null = null;
  return {
    /** Stops sampling (the first call) and returns the figures (every call). */
    stop() {
      if (result) return result;
      clearInterval(timer);
      sample();
      const seconds = (performance.now() - started) / 1000;
      const out: Record<string, { peak_rss_mb: number; cpu_pct: number | null }> = {};
      for (const [name, pid] of Object.entries(pids)) {
        const c1 = cpuSecondsOf(pid);
        const c0 = cpu0[name];
        out[name] = {
          peak_rss_mb: round(peak[name], 1),
          cpu_pct: c0 === null || c1 === null ? null : round((100 * (c1 - c0)) / seconds, 0),
        };
      }
      result = out;
      return out;
    },
  };
}

/** Waits until `check` is truthy, polling; throws after `timeoutMs` naming `what`. */
export async function until<T>(
  check: () => Promise<T> | T,
  what: string,
  { timeoutMs = 30_000, intervalMs = 50, signal }: {
    timeoutMs?: number;
    intervalMs?: number;
    signal?: AbortSignal;
  } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    signal?.throwIfAborted();
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Waits for a child's HTTP server to answer 200 on `path`; fails early if the child exits. */
export async function waitHttp(child: Child, port: number, path = "/health", timeoutMs = 30_000) {
  let exited = false;
  child.process.status.then(() => (exited = true));
  const tail = async () =>
    (await Deno.readTextFile(child.logPath).catch(() => "")).trim().split("\n").slice(-5)
      .join("\n");
  const answers = async () => {
    if (exited) throw new Error(`${child.name} exited before answering:\n${await tail()}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}${path}`);
      await res.body?.cancel();
      return res.status === 200;
    } catch {
      return false;
    }
  };
  try {
    await until(answers, `${child.name} on port ${port}`, { timeoutMs, intervalMs: 100 });
  } catch (error) {
    if (exited) throw error;
    throw new Error(`${(error as Error).message}; its log ends:\n${await tail()}`);
  }
}

/** Waits until a child's log contains `text` (or throws if the child exits first). */
export async function waitLog(child: Child, text: string, timeoutMs = 30_000) {
  let exited = false;
  child.process.status.then(() => (exited = true));
  await until(
    async () => {
      if (exited) throw new Error(`${child.name} exited before logging "${text}"`);
      return (await Deno.readTextFile(child.logPath).catch(() => "")).includes(text);
    },
    `${child.name} to log "${text}"`,
    { timeoutMs, intervalMs: 100 },
  );
}

export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

export function round(value: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
