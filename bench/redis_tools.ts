/**
 * Redis helpers for the bench: its own connection, deleting exactly its keys, and counting the
 * commands a workload sends (MONITOR, filtered on the bench's key prefix).
 */
import { Redis } from "ioredis";

export const REDIS_URL = Deno.env.get("REDIS_URL") || "redis://127.0.0.1:6379";

export function connect(name = "bench"): Redis {
  const redis = new Redis(REDIS_URL, { connectionName: name, maxRetriesPerRequest: 1 });
  redis.on("error", () => {});
  return redis;
}

/** Deletes every key of a service prefix (`{prefix}*`, as src/keys.ts wraps it). */
export function deletePrefix(redis: Redis, prefix: string): Promise<number> {
  return deleteMatching(redis, `{${prefix}}*`);
}

/** Deletes every key of a bench run: all its prefixes are `<runPrefix>-<phase>`. */
export function deleteRunKeys(redis: Redis, runPrefix: string): Promise<number> {
  return deleteMatching(redis, `{${runPrefix}-*`);
}

async function deleteMatching(redis: Redis, pattern: string): Promise<number> {
  let cursor = "0";
  let deleted = 0;
  do {
    const [next, found] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 5_000);
    cursor = next;
    if (found.length) deleted += await redis.unlink(...found);
  } while (cursor !== "0");
  return deleted;
}

export async function redisVersion(redis: Redis): Promise<{ version: string; pid: number | null }> {
  const info = await redis.info("server");
  const field = (name: string) => info.match(new RegExp(`^${name}:(.*)$`, "m"))?.[1]?.trim();
  return { version: field("redis_version") ?? "?", pid: Number(field("process_id")) || null };
}

export interface CommandCounts {
  /** Commands sent by clients (one network round trip each, unless pipelined). */
  client: Record<string, number>;
  /** Commands run inside Lua scripts. */
  lua: Record<string, number>;
}

/**
 * Runs `work` while MONITOR records the commands that name `prefix` in a key (plus EVALSHA and
 * EVAL, whose keys are among the arguments). Commands of other users of the shared Redis are
 * left out. MONITOR slows Redis down: use it only on a short, untimed workload.
 */
export async function countCommands(
  redis: Redis,
  prefix: string,
  work: () => Promise<void>,
): Promise<CommandCounts> {
  const counts: CommandCounts = { client: {}, lua: {} };
  const tag = `{${prefix}}`;
  const monitor = await redis.monitor();
  monitor.on("monitor", (_time: string, args: string[], source: string) => {
    if (!args.some((a) => typeof a === "string" && a.includes(tag))) return;
    const name = String(args[0]).toUpperCase();
    const into = source === "lua" ? counts.lua : counts.client;
    into[name] = (into[name] ?? 0) + 1;
  });
  try {
    await work();
    // Let MONITOR deliver what Redis already ran.
    await new Promise((r) => setTimeout(r, 200));
  } finally {
    monitor.disconnect();
  }
  return counts;
}

/** Divides every count by `n` (per request, per task), to two decimals. */
export function perUnit(counts: CommandCounts, n: number) {
  const scale = (c: Record<string, number>) =>
    Object.fromEntries(
      Object.entries(c).sort(([, a], [, b]) => b - a).map((
        [k, v],
      ) => [k, Math.round((v / n) * 100) / 100]),
    );
  const total = (c: Record<string, number>) =>
    Math.round((Object.values(c).reduce((a, b) => a + b, 0) / n) * 100) / 100;
  return {
    client_total: total(counts.client),
    lua_total: total(counts.lua),
    client: scale(counts.client),
    lua: scale(counts.lua),
  };
}

/**
 * Copies the first `max` entries of a stream to another key with the same ids (a prefix of an
 * event log is a valid event log). Returns how many were copied.
 */
export async function copyStream(redis: Redis, from: string, to: string, max: number) {
  let copied = 0;
  let start = "-";
  while (copied < max) {
    const batch = await redis.xrange(from, start, "+", "COUNT", Math.min(5_000, max - copied));
    if (batch.length === 0) break;
    const pipeline = redis.pipeline();
    for (const [id, fields] of batch) pipeline.xadd(to, id, ...fields);
    for (const [error] of (await pipeline.exec()) ?? []) if (error) throw error;
    copied += batch.length;
    start = `(${batch[batch.length - 1][0]}`;
  }
  return copied;
}
