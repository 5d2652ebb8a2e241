import { Redis } from "ioredis";

export interface RedisOptions {
  /** Fail a command after this long instead of waiting for a reconnect (not for blocking reads). */
  commandTimeoutMs?: number;
  name?: string;
}

/**
 * Opens a Redis connection. Commands fail fast when Redis is unreachable: the HTTP layer answers
 * 503 rather than holding requests open while ioredis reconnects in the background.
 */
export function connectRedis(url: string, options: RedisOptions = {}): Redis {
  const redis = new Redis(url, {
    connectionName: options.name,
    commandTimeout: options.commandTimeoutMs,
    maxRetriesPerRequest: 1,
    enableAutoPipelining: true,
    // On a connection with a command timeout, a command in flight when the connection drops fails
    // instead of being sent again after the reconnect: its caller has already moved on (a 503
    // answered), and a late ingest or append would happen behind its back. Blocking connections
    // (no timeout) keep resending: ioredis would otherwise leave their lost command unsettled, and
    // every later command queued behind it.
    autoResendUnfulfilledCommands: options.commandTimeoutMs === undefined,
    retryStrategy: (times) => Math.min(50 * 2 ** times, 2_000),
    lazyConnect: false,
  });
  // Connection errors surface on the commands that fail; without a listener ioredis logs each one.
  redis.on("error", () => {});
  return redis;
}

/** Waits until the connection is ready, or throws after `timeoutMs`. */
export async function waitReady(redis: Redis, timeoutMs = 5_000): Promise<void> {
  if (redis.status === "ready") return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`Redis not ready after ${timeoutMs} ms`));
    }, timeoutMs);
    const onReady = () => {
      cleanup();
      resolve();
    };
    const cleanup = () => {
      clearTimeout(timer);
      redis.off("ready", onReady);
    };
    redis.on("ready", onReady);
  });
}

/** Closes a connection, waiting for queued replies; never throws. */
export async function closeRedis(redis: Redis): Promise<void> {
  try {
    if (redis.status === "ready") await redis.quit();
    else redis.disconnect();
  } catch {
    redis.disconnect();
  }
}

/**
 * Whether Redis appends every write to its AOF, from INFO persistence: without it, webhooks
 * acknowledged since the last RDB snapshot are lost when Redis restarts. Null when the server does
 * not say (some managed services hide INFO sections).
 */
export async function aofEnabled(redis: Redis): Promise<boolean | null> {
  const info = await redis.info("persistence");
  const match = /^aof_enabled:(\d)/m.exec(info);
  return match ? match[1] === "1" : null;
}
