import type { RedisClient } from "../src/redis/client.ts";
import { type Config, loadConfig } from "../src/config.ts";
import { createLogger, type Logger } from "../src/log.ts";
import { deleteMatching } from "../src/projections/rebuild.ts";
import { waitReady } from "../src/redis/client.ts";
import { inheritedEnv } from "../bench/procs.ts";
import { groupInfo } from "../src/redis/streams.ts";
import { createServices, type Services } from "../src/runtime.ts";
import { type ConsumerOptions, startConsumers } from "../consumers/kinds.ts";

/**
 * The shared webhook fixtures, vendored from ../shared/fixtures/webhooks/ so a clean clone is
 * self-contained; fixtures_test.ts checks the copy still matches when ../shared is present.
 */
export const FIXTURES = new URL("./fixtures/webhooks/", import.meta.url);
export const SHARED_FIXTURES = new URL("../../shared/fixtures/webhooks/", import.meta.url);

export async function fixture(name: string): Promise<string> {
  return await Deno.readTextFile(new URL(name, FIXTURES));
}

export function uniquePrefix(name: string): string {
  return `test-${name}-${crypto.randomUUID().slice(0, 8)}`;
}

/** Logs only when TEST_LOG is set, so failing runs can be replayed with logs. */
export function testLogger(): Logger {
  const level = Deno.env.get("TEST_LOG") ? "debug" : "error";
  return createLogger(level, {}, (line) => Deno.env.get("TEST_LOG") && console.error(line));
}

export interface TestEnv {
  config: Config;
  services: Services;
  log: Logger;
  prefix: string;
  post(body: string | object, headers?: Record<string, string>): Promise<Response>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Services on the shared Redis under a key prefix of their own; disposing deletes every key of
 * that prefix and closes the connection.
 */
export async function testEnv(name: string, env: Record<string, string> = {}): Promise<TestEnv> {
  const prefix = uniquePrefix(name);
  const config = loadConfig({ KEY_PREFIX: prefix, RETRY_BASE_MS: "10", ...env });
  const log = testLogger();
  const services = createServices(config, log);
  await waitReady(services.redis);
  return {
    config,
    services,
    log,
    prefix,
    post: (body, headers = {}) =>
      Promise.resolve(services.app.request("/webhook", {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: typeof body === "string" ? body : JSON.stringify(body),
      })),
    async [Symbol.asyncDispose]() {
      for (const { keys } of services.partitions.list) {
        await deleteMatching(services.redis, keys.pattern);
      }
      await services.close();
    },
  };
}

/** Polls `check` until it returns a truthy value, or fails after `timeoutMs`. */
export async function waitFor<T>(
  check: () => Promise<T> | T,
  { timeoutMs = 10_000, intervalMs = 20, what = "condition" } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last as NonNullable<T>;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
}

/** True when every group on the streams (or only the named ones) has read and acknowledged everything. */
export async function caughtUp(
  redis: RedisClient,
  streams: string[],
  only?: string[],
): Promise<boolean> {
  for (const stream of streams) {
    for (const g of await groupInfo(redis, stream)) {
      if (only && !only.includes(g.name)) continue;
      if (g.pending !== 0 || g.lag !== 0) return false;
    }
  }
  return true;
}

/** Reads the whole stream as [id, record] pairs. */
export async function readStream(redis: RedisClient, key: string) {
  const entries = await redis.xrange(key, "-", "+");
  return entries.map(([id, fields]) => {
    const record: Record<string, string> = {};
    for (let i = 0; i < fields.length; i += 2) record[fields[i]] = fields[i + 1];
    return { id, ...record } as { id: string } & Record<string, string>;
  });
}

/** The environment for a service subprocess: the bench's (only what Deno needs). */
export { inheritedEnv as childEnv } from "../bench/procs.ts";

/**
 * A `main.ts <command>` process with a clean environment plus `env`; its log (stderr) is drained
 * as it comes, so a full pipe never stalls it, and resolves in `log` once it exits.
 */
export function spawnMain(command: string, env: Record<string, string>) {
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", new URL("../main.ts", import.meta.url).pathname, command],
    clearEnv: true,
    env: { ...inheritedEnv(), ...env },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  return { process, log: new Response(process.stderr).text() };
}

const handedOut = new Set<number>();

/** A port free right now and not handed out before by this process (two calls never collide). */
export function freePort(): number {
  while (true) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    listener.close();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

/**
 * Name resolution for tests: "localhost" and "*.localhost" are loopback, every other name fails
 * without a DNS query (this machine's resolver is not on loopback, and tests stay on loopback).
 */
export function testResolve(host: string): Promise<string[]> {
  if (host === "localhost" || host.endsWith(".localhost")) return Promise.resolve(["127.0.0.1"]);
  return Promise.reject(new Error(`Test resolver: "${host}" does not resolve`));
}

/** startConsumers for a test env, with the loopback-only resolver. */
export function runConsumers(env: TestEnv, options: ConsumerOptions = {}, config = env.config) {
  return startConsumers(config, env.services, env.log, { resolve: testResolve, ...options });
}
