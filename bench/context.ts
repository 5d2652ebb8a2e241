/** What every bench phase shares: processes, the bench's Redis connection, names and logs. */
import type { Redis } from "ioredis";
import type { Processes } from "./procs.ts";
import { REDIS_URL } from "./redis_tools.ts";

export interface BenchContext {
  procs: Processes;
  redis: Redis;
  /** `bench-<random>`: every prefix of this run starts with it. */
  runPrefix: string;
  /** Prefixes used so far, each deleted when its phase ends and again at the very end. */
  prefixes: Set<string>;
  /** Logs of children and wrk output; removed at the end unless kept. */
  tmpDir: string;
  redisPid: number | null;
  /** Aborted on Ctrl-C. */
  signal: AbortSignal;
  token: string;
  tokenHeader: string;
  logLevel: string;
  say(line: string): void;
}

export const MINIMAL_SERVER = new URL("./minimal_server.ts", import.meta.url).pathname;

/** Environment of a service process (`main.ts serve|worker`) in this bench. */
export function serviceEnv(
  ctx: BenchContext,
  prefix: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    REDIS_URL,
    KEY_PREFIX: prefix,
    HOST: "127.0.0.1",
    PROVIDER_MODE: "offline",
    WEBHOOK_TOKEN: ctx.token,
    WEBHOOK_TOKEN_HEADER: ctx.tokenHeader,
    RATE_LIMIT_PER_MINUTE: "100000000",
    LOG_LEVEL: ctx.logLevel,
    // HTTP_PROCESSES=2 deno task bench: measure the server on several processes sharing the port.
    HTTP_PROCESSES: Deno.env.get("HTTP_PROCESSES") ?? "1",
    ...(Deno.env.get("BENCH_SERVICE_ENV") ? JSON.parse(Deno.env.get("BENCH_SERVICE_ENV")!) : {}),
    ...extra,
  };
}

export function newPrefix(ctx: BenchContext, name: string): string {
  const prefix = `${ctx.runPrefix}-${name}`;
  ctx.prefixes.add(prefix);
  return prefix;
}

export function logPath(ctx: BenchContext, name: string): string {
  return `${ctx.tmpDir}/${name}.log`;
}
