import { Redis } from "ioredis";

export interface RedisOptions {
  /**
   * Fail a command after this long instead of waiting for a reconnect (not for blocking reads).
   * A connection with a timeout also fails fast while it is known to be down: see connectRedis.
   */
  commandTimeoutMs?: number;
  name?: string;
}

/** The longest pause between reconnect attempts: Redis back means commands back within it. */
const RECONNECT_MAX_MS = 200;

/**
 * Opens a Redis connection. Commands fail fast when Redis is unreachable: the HTTP layer answers
 * 503 rather than holding requests open while ioredis reconnects in the background.
 *
 * A connection with a command timeout (the commands connection) answers every command at once with
 * an error while it is not connected: no offline queue, and what was in flight when the connection
 * dropped is rejected on the spot. Nothing then waits for a timeout, its own or (with
 * auto-pipelining, which runs one batch at a time) that of a batch ahead of it. The timeout only
 * remains for a Redis that is connected but does not answer (a stalled server, a half-open
 * connection): there a batch still waits for the one ahead of it, so up to two timeouts.
 */
export function connectRedis(url: string, options: RedisOptions = {}): Redis {
  const failFast = options.commandTimeoutMs !== undefined;
  const redis = new Redis(url, {
    connectionName: options.name,
    commandTimeout: options.commandTimeoutMs,
    // Commands issued while connecting or reconnecting fail instead of being queued for later.
    enableOfflineQueue: !failFast,
    // 0: commands in flight are rejected when the connection closes; 1: after a failed reconnect.
    maxRetriesPerRequest: failFast ? 0 : 1,
    enableAutoPipelining: true,
    // On a connection with a command timeout, a command in flight when the connection drops fails
    // instead of being sent again after the reconnect: its caller has already moved on (a 503
    // answered), and a late ingest or append would happen behind its back. Blocking connections
    // (no timeout) keep resending: ioredis would otherwise leave their lost command unsettled, and
    // every later command queued behind it.
    autoResendUnfulfilledCommands: !failFast,
    // 50, 100, 200, 200, ... ms: a returning Redis is used again within RECONNECT_MAX_MS.
    retryStrategy: (times) => Math.min(25 * 2 ** times, RECONNECT_MAX_MS),
    // A Redis still loading its AOF is polled again this soon (ioredis waits up to 1 s by default).
    maxLoadingRetryTime: 100,
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
